"""Make every SQLAlchemy transaction on SQLite start with BEGIN IMMEDIATE.

Nova's services write to the same SQLite files from several processes; with deferred
transactions a reader that later writes gets "database is locked" at once instead of waiting
(one build in three broke). BEGIN IMMEDIATE takes the write lock up front, so the busy timeout
applies and writers queue. oslo.db already emits its own BEGIN (marker `in_transaction`);
these class-level listeners run before its per-engine ones, so ours wins and its is skipped.
Loaded through a .pth file in the service venvs (tests/cloud/plugins.py).
"""

import sqlite3

from sqlalchemy import event
from sqlalchemy.engine import Engine


@event.listens_for(Engine, "connect")
def _connect(dbapi_connection, _record):
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.isolation_level = None  # SQLAlchemy, not the driver, emits BEGIN
        dbapi_connection.execute("PRAGMA busy_timeout = 60000")


@event.listens_for(Engine, "begin")
def _begin(conn):
    if conn.dialect.name == "sqlite" and "in_transaction" not in conn.info:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        conn.info["in_transaction"] = True


@event.listens_for(Engine, "commit")
@event.listens_for(Engine, "rollback")
def _end(conn):
    conn.info.pop("in_transaction", None)
