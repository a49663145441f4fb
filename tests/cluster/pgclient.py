"""PostgreSQL clients of the tests: psql (14) run inside a namespace of the run.

Passwords travel in PGPASSWORD, never on a command line.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

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
    password: str | None = None
    dbname: str = "postgres"

    def conninfo(self, host: str, sslmode: str = "verify-full", **extra: str) -> str:
        parts = {
            "host": host,
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
        self, host: str, sql: str, timeout: float = 20, password: str | None = None, **conn: str
    ) -> subprocess.CompletedProcess:
        env = minimal_env(PGPASSWORD=password if password is not None else (self.password or ""),
                          PGCONNECT_TIMEOUT="3")  # fmt: skip
        argv = ["nsenter", f"--net=/run/netns/{self.netns}", "--",
                PSQL, "--no-psqlrc", "-X", "-At", "-v", "ON_ERROR_STOP=1",
                "-d", self.conninfo(host, **conn), "-c", sql]  # fmt: skip
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def query(self, host: str, sql: str, **kw) -> str:
        res = self.run(host, sql, **kw)
        if res.returncode != 0:
            raise SqlError(f"psql to {host} failed: {res.stderr.strip()}", res.stderr)
        return res.stdout.strip()
