#!/bin/bash
# Patroni's venv under /opt (readable by postgres; a venv under /root is not).
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

install-packages python3-venv
venv=$BAKERY_PATRONI_VENV
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
chmod 0755 "$venv"
