#!/bin/bash
# The empty data directory Patroni bootstraps into (docs/node-layout.md): 0700, postgres.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

install -d -o postgres -g postgres -m 0755 /var/lib/postgresql "/var/lib/postgresql/$BAKERY_PG_MAJOR"
data=/var/lib/postgresql/$BAKERY_PG_MAJOR/patroni
install -d -o postgres -g postgres -m 0700 "$data"
if [ -n "$(ls -A "$data")" ]; then
    echo "postgresql: $data is not empty; a golden image carries no database" >&2
    exit 1
fi
