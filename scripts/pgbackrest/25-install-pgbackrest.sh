#!/bin/bash
# pgBackRest and the directories its bundle config (/etc/pgbackrest/pgbackrest.conf) expects.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

install-pinned pgbackrest "$BAKERY_PGBACKREST_VERSION"
install -d -o postgres -g postgres -m 0750 /etc/pgbackrest /var/lib/pgbackrest /var/log/pgbackrest /var/spool/pgbackrest
# The packaged TLS server unit serves nothing without a config: keep it off.
if systemctl is-enabled --quiet pgbackrest.service 2>/dev/null; then
    systemctl disable pgbackrest.service
fi
