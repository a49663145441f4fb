#!/bin/bash
# node_exporter and postgres_exporter (Debian), disabled until a node bundle enables them.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

files=$(dirname "$0")/files
# One apt run for all three (nftables: bakery-scrape-guard.service loads the bundle's ruleset
# with it); then the pinned versions are checked.
install-packages nftables prometheus-node-exporter prometheus-postgres-exporter
install-pinned prometheus-node-exporter "$BAKERY_NODE_EXPORTER_VERSION"
install-pinned prometheus-postgres-exporter "$BAKERY_POSTGRES_EXPORTER_VERSION"
# Drop-ins for Debian's units: the bundle's listen address and login, after the scrape guard.
for unit in prometheus-node-exporter prometheus-postgres-exporter; do
    install -d -o root -g root -m 0755 "/etc/systemd/system/$unit.service.d"
    install-if-changed "$files/$unit.service.d/bakery.conf" \
        "/etc/systemd/system/$unit.service.d/bakery.conf" root:root 0644
done
for unit in bakery-scrape-guard.service bakery-job-metrics.service bakery-job-metrics.path; do
    install-if-changed "$files/$unit" "/etc/systemd/system/$unit" root:root 0644
done
install-if-changed "$files/bakery-job-metrics" /usr/local/sbin/bakery-job-metrics root:root 0755
# bakery's jobs write their status here (group postgres); node_exporter reads the metrics dir.
install -d -o root -g postgres -m 0775 /var/lib/bakery/status
install -d -o root -g root -m 0755 /var/lib/bakery/metrics
# Debian also ships SysV scripts for them: with those, `systemctl enable` at first boot runs
# update-rc.d (seconds each under emulation). Only the native units run these services.
for name in prometheus-node-exporter prometheus-postgres-exporter; do
    if [ -e "/etc/init.d/$name" ]; then
        update-rc.d -f "$name" remove
        rm -f "/etc/init.d/$name"
    fi
done
# Debian enables the exporters on installation: off until the bundle says otherwise.
for unit in prometheus-node-exporter.service prometheus-postgres-exporter.service \
            bakery-scrape-guard.service bakery-job-metrics.path; do
    if systemctl is-enabled --quiet "$unit" 2>/dev/null; then
        systemctl disable "$unit"
    fi
done
