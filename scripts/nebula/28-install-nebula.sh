#!/bin/bash
# Nebula overlay (Debian package); its config directory for the node bundle.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

install-packages nebula
version=$(dpkg-query -W -f='${Version}' nebula)
case "$version" in
    "$BAKERY_NEBULA_VERSION"*) ;;
    *) echo "nebula: installed $version, the definition pins $BAKERY_NEBULA_VERSION" >&2; exit 1 ;;
esac
install -d -o root -g root -m 0750 /etc/nebula
