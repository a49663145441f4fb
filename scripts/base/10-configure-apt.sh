#!/bin/bash
# Apt hygiene: no recommends, retries, and no periodic or unattended apt runs on a node.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

install-if-changed - /etc/apt/apt.conf.d/90bakery root:root 0644 <<'CONF'
// bakery: nodes change only through a new image, never by themselves.
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Retries "3";
APT::Periodic::Enable "0";
APT::Periodic::Update-Package-Lists "0";
APT::Periodic::Unattended-Upgrade "0";
CONF

# No manuals, documentation (but copyright notices) or translations on a database node.
install-if-changed - /etc/dpkg/dpkg.cfg.d/90bakery-excludes root:root 0644 <<'CONF'
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
CONF

if [ "$(dpkg-query -W -f='${db:Status-Status}' unattended-upgrades 2>/dev/null || true)" = installed ]; then
    apt-get -q purge -y unattended-upgrades
fi
# Masking works offline (in a chroot too) and survives package upgrades.
for timer in apt-daily.timer apt-daily-upgrade.timer; do
    if [ "$(readlink "/etc/systemd/system/$timer" || true)" != /dev/null ]; then
        systemctl mask "$timer"
    fi
done
