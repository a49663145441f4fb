#!/bin/bash
# Patroni and every dependency exactly as the hash-checked lock says.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

venv=$BAKERY_PATRONI_VENV
lock=$BAKERY_PATRONI_LOCK
spec="patroni[$BAKERY_PATRONI_EXTRAS]==$BAKERY_PATRONI_VERSION"
[ -n "$BAKERY_PATRONI_EXTRAS" ] || spec="patroni==$BAKERY_PATRONI_VERSION"
grep -qF "$spec " "$lock" || { echo "patroni: $lock does not pin $spec" >&2; exit 1; }

# A complete lock with hashes: pip installs exactly these files or fails. Already satisfied
# requirements are left alone, so a second run changes nothing.
"$venv/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check --require-hashes --no-build-isolation -r "$lock"
"$venv/bin/pip" check --disable-pip-version-check
installed=$("$venv/bin/patroni" --version | awk '{print $2}')
[ "$installed" = "$BAKERY_PATRONI_VERSION" ] || { echo "patroni: installed $installed, want $BAKERY_PATRONI_VERSION" >&2; exit 1; }
