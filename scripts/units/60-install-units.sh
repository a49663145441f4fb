#!/bin/bash
# Units for nebula, consul and patroni: installed, disabled. The node bundle's runcmd enables
# those the node needs; each refuses to start without its config (Condition*).
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

files=$(dirname "$0")/files
for unit in nebula.service consul.service patroni.service; do
    install-if-changed "$files/$unit" "/etc/systemd/system/$unit" root:root 0644
    if systemctl is-enabled --quiet "$unit" 2>/dev/null; then
        systemctl disable "$unit"
    fi
done
