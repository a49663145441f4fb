#!/bin/bash
# nftables rule: 169.254.169.254 (and fe80::a9fe:a9fe) reachable by root only, from boot on.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

files=$(dirname "$0")/files
install-packages nftables
install-if-changed "$files/metadata-guard.nft" /etc/bakery/metadata-guard.nft root:root 0644
install-if-changed "$files/bakery-metadata-guard.service" /etc/systemd/system/bakery-metadata-guard.service root:root 0644
systemctl is-enabled --quiet bakery-metadata-guard.service 2>/dev/null ||
    systemctl enable bakery-metadata-guard.service
# Syntax check without touching the build host's ruleset.
nft --check -f /etc/bakery/metadata-guard.nft 2>/dev/null ||
    echo "metadata-guard: 'nft --check' unavailable here (no netlink in a chroot); checked at boot"
