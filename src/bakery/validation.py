"""What the configuration and the image definitions share: strict models, DNS labels, and
turning pydantic's errors into problems that name the field, the bad value and what is allowed."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints

from .errors import Problem

# A DNS label: used for names that end up in host names, Consul service names and file names.
Label = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]


class Model(BaseModel):
    """Strict base: unknown keys are errors (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def problem_of(
    error: Mapping[str, Any],
    prefix: str | None,
    reference: str,
    secret_fields: Collection[str] = (),
) -> Problem:
    """One pydantic error as a Problem: the dotted path (under `prefix`), pydantic's message
    and the value given, except for fields that hold secrets, whose values are never shown."""
    parts = [str(p) for p in error["loc"]]
    path = ".".join([prefix, *parts] if prefix else parts) or "(top)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return Problem(path, f"unknown key (check the spelling; see {reference})")
    if error["type"] == "missing":
        return Problem(path, "required, but missing")
    if set(secret_fields).intersection(parts):
        return Problem(path, f"{message} (value not shown: give {{env: NAME}} or {{file: PATH}})")
    text = repr(error.get("input"))
    text = text if len(text) <= 80 else text[:77] + "..."
    return Problem(path, f"{message} (got {text})")
