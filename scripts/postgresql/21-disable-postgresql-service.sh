#!/bin/bash
# The distribution's postgresql.service stays off: Patroni starts PostgreSQL itself.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

for unit in postgresql.service "postgresql@$BAKERY_PG_MAJOR-main.service"; do
    if systemctl is-enabled --quiet "$unit" 2>/dev/null; then
        systemctl disable "$unit"
    fi
done
