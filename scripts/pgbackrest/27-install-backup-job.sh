#!/bin/bash
# The backup job (bakery-pgbackrest: stanza creation, scheduled backups, restore) and its units,
# installed disabled (the node bundle enables the timers), and the status directory where
# bakery's node jobs record their last outcome.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

files=$(dirname "$0")/files
install-if-changed "$files/bakery-pgbackrest" /usr/lib/bakery/pgbackrest/bakery-pgbackrest root:root 0755
for unit in bakery-backup@.service bakery-backup-full.timer bakery-backup-diff.timer; do
    install-if-changed "$files/$unit" "/etc/systemd/system/$unit" root:root 0644
done
for timer in bakery-backup-full.timer bakery-backup-diff.timer; do
    if systemctl is-enabled --quiet "$timer" 2>/dev/null; then
        systemctl disable "$timer"
    fi
done
# One JSON file per job (/var/lib/bakery/status/<job>.json); jobs run as postgres.
install -d -o root -g root -m 0755 /var/lib/bakery
install -d -o root -g postgres -m 0775 /var/lib/bakery/status
