#!/bin/bash
# Nebula overlay (Debian package); its config directory for the node bundle.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

install-pinned nebula "$BAKERY_NEBULA_VERSION"
install -d -o root -g root -m 0750 /etc/nebula
