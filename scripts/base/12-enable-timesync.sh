#!/bin/bash
# Time sync: TLS, Patroni leases and WAL timestamps need a correct clock. Keep a time daemon
# the base already has (chrony, ntpsec); otherwise systemd-timesyncd.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

for daemon in chrony ntpsec ntp; do
    if [ "$(dpkg-query -W -f='${db:Status-Status}' "$daemon" 2>/dev/null || true)" = installed ]; then
        echo "base: time sync by $daemon"
        exit 0
    fi
done
install-packages systemd-timesyncd
systemctl is-enabled --quiet systemd-timesyncd.service || systemctl enable systemd-timesyncd.service
