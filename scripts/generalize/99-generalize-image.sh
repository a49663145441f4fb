#!/bin/bash
# Generalization, always last: nothing node- or build-specific stays in the image.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

if command -v cloud-init >/dev/null; then
    cloud-init clean --logs --seed
fi
# Empty (not missing) machine-id: systemd treats the next boot as the first and makes a new one.
: > /etc/machine-id
if [ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then
    rm -f /var/lib/dbus/machine-id
fi
rm -f /etc/ssh/ssh_host_*
rm -f /var/lib/systemd/random-seed /var/lib/systemd/credential.secret
echo localhost > /etc/hostname
cat > /etc/hosts <<'HOSTS'
127.0.0.1	localhost
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
HOSTS

apt-get clean
find /var/lib/apt/lists -mindepth 1 -maxdepth 1 ! -name partial -exec rm -rf {} +
rm -f /var/cache/debconf/*-old /var/lib/dpkg/*-old
rm -rf /root/.cache /root/.bash_history /root/.wget-hsts

# Logs: rotated ones go, the rest are truncated (their owners and modes stay).
find /var/log -type f \( -name '*.gz' -o -name '*.xz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
if [ -d /var/log/journal ]; then find /var/log/journal -mindepth 1 -delete; fi
find /tmp /var/tmp -mindepth 1 -maxdepth 1 -exec rm -rf {} +
