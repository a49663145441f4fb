"""The errors bakery reports to its users.

Every error a user can cause or fix is a BakeryError: tasks.py turns it into a short message
and a non-zero exit, without a traceback.
"""

from dataclasses import dataclass


class BakeryError(Exception):
    """A failure the user can act on; the message says what and what to do."""


class BuildError(BakeryError):
    """The local build failed; the message says where and what to look at."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration: where, what was found, what is allowed."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ConfigError(BakeryError):
    """The configuration has one or more problems; all of them are listed."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        count = len(problems)
        heading = f"configuration has {count} problem{'s' if count != 1 else ''}:"
        super().__init__("\n".join([heading, *(f"  {p}" for p in problems)]))
