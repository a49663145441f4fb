"""A client that commits numbered rows as fast as it can and reports each acknowledgement.

Run by the harness with the Patroni venv's Python (it has psycopg2) inside the client's network
namespace. Output, one line each, flushed: `ack ID NODE EPOCH` once COMMIT has returned,
`err ID NODE MESSAGE` when a commit failed or its outcome is unknown. The password comes from
PGPASSWORD. Stops on SIGTERM or after --seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time

import psycopg2

stop = False


def _stop(signum, frame):
    global stop
    stop = True


def connect(name: str, address: str, ca: str):
    return psycopg2.connect(
        host=name,  # what the certificate names; hostaddr is where to go
        hostaddr=address,
        port=5432,
        dbname="postgres",
        user="postgres",
        sslmode="verify-full",
        sslrootcert=ca,
        connect_timeout=1,
        target_session_attrs="read-write",
        application_name="bakery-writer",
        # A node killed outright answers nothing: give up on it within seconds.
        tcp_user_timeout=2000,
        keepalives=1,
        keepalives_idle=1,
        keepalives_interval=1,
        keepalives_count=2,
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", action="append", required=True, help="NAME@ADDRESS")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--seconds", type=float, default=300)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop)
    hosts = [tuple(h.split("@", 1)) for h in args.host]
    # A host that timed out is tried again only after a while, so a dead node does not slow
    # down finding the new leader; one that answered (read-only, say) is retried at once.
    next_try = {name: 0.0 for name, _ in hosts}
    end = time.monotonic() + args.seconds
    conn, current, row = None, None, 0
    out = sys.stdout
    while not stop and time.monotonic() < end:
        if conn is None:
            for name, address in hosts:
                if time.monotonic() < next_try[name]:
                    continue
                try:
                    conn, current = connect(name, address, args.ca), name
                    break
                except psycopg2.Error as error:
                    slow = "timeout" in str(error) or "timed out" in str(error)
                    next_try[name] = time.monotonic() + (2.0 if slow else 0.05)
            if conn is None:
                time.sleep(0.05)
                continue
        row += 1
        try:
            with conn.cursor() as cur:
                cur.execute(f"INSERT INTO {args.table} (id) VALUES (%s)", (row,))  # noqa: S608
            conn.commit()
        except psycopg2.Error as error:
            message = " ".join(str(error).split())[:160]
            out.write(f"err {row} {current} {message}\n")
            out.flush()
            with contextlib.suppress(psycopg2.Error):
                conn.close()
            conn = None
            continue
        out.write(f"ack {row} {current} {time.time():.3f}\n")
        out.flush()
    out.write("done\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
