#!/bin/bash
# dnsmasq (the binary only) and bakery-consul-dns.service, disabled: forwards .consul to the agent.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

files=$(dirname "$0")/files
# dnsmasq-base: no packaged service, no /etc/dnsmasq.d; creates the dnsmasq user.
install-packages dnsmasq-base
install-if-changed "$files/bakery-consul-dns.service" \
    /etc/systemd/system/bakery-consul-dns.service root:root 0644
if systemctl is-enabled --quiet bakery-consul-dns.service 2>/dev/null; then
    systemctl disable bakery-consul-dns.service
fi
