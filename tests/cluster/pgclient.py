"""PostgreSQL clients of the tests: psql (14) run inside a namespace of the run.

A target is "name@address": the node's name (as in its certificate) and where it listens.

Passwords travel in PGPASSWORD, never on a command line.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

from processes import minimal_env

PSQL = "/usr/lib/postgresql/14/bin/psql"


class SqlError(RuntimeError):
    def __init__(self, message: str, stderr: str):
        super().__init__(message)
        self.stderr = stderr


@dataclass
class Psql:
    """psql over TCP from inside `netns`, TLS verified against the cluster CA."""

    netns: str
    cafile: str
    user: str = "postgres"
    password: str | None = field(default=None, repr=False)
    dbname: str = "postgres"

    def conninfo(self, host: str, sslmode: str = "verify-full", **extra: str) -> str:
        # libpq 14 matches only DNS names in certificates (IP SANs came with 15): verify the
        # node's name while connecting to its address.
        name, _, address = host.partition("@")
        parts = {
            "host": name,
            "hostaddr": address or name,
            "port": "5432",
            "dbname": self.dbname,
            "user": self.user,
            "sslmode": sslmode,
            "sslrootcert": self.cafile,
            "connect_timeout": "3",
            "application_name": "bakery-cluster-test",
        } | extra
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def run(
        self,
        host: str,
        sql: str | None,
        timeout: float = 20,
        password: str | None = None,
        stdin: str | None = None,
        **conn: str,
    ) -> subprocess.CompletedProcess:
        """Run `sql` (or the script given as `stdin`, for statements holding a secret)."""
        env = minimal_env(
            PGPASSWORD=password if password is not None else (self.password or ""),
            PGCONNECT_TIMEOUT="3",
        )
        argv = [
            "nsenter",
            f"--net=/run/netns/{self.netns}",
            "--",
            PSQL,
            "--no-psqlrc",
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            self.conninfo(host, **conn),
        ]
        argv += ["-c", sql] if sql is not None else ["-f", "-"]
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            input=stdin if stdin is not None else "",
        )

    def query(self, host: str, sql: str, **kw) -> str:
        res = self.run(host, sql, **kw)
        if res.returncode != 0:
            raise SqlError(f"psql to {host} failed: {res.stderr.strip()}", res.stderr)
        return res.stdout.strip()
