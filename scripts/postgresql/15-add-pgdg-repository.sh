#!/bin/bash
# PostgreSQL apt repository (pgdg) with a signed-by keyring whose fingerprint is checked.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

[ "$BAKERY_PG_SOURCE" = pgdg ] || exit 0
for name in BAKERY_PGDG_MIRROR BAKERY_PGDG_KEY_URL BAKERY_PGDG_KEY_FINGERPRINT; do
    [ -n "${!name}" ] || { echo "postgresql: $name is required with BAKERY_PG_SOURCE=pgdg" >&2; exit 1; }
done
keyring=/etc/apt/keyrings/pgdg.gpg
want=$(echo "$BAKERY_PGDG_KEY_FINGERPRINT" | tr -d ' ' | tr '[:lower:]' '[:upper:]')
if [ ! -s "$keyring" ] || ! gpg --show-keys --with-colons "$keyring" 2>/dev/null | grep -q "^fpr:::::::::$want:"; then
    install-packages gnupg
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    curl -fsSL --retry 3 --max-time 120 -o "$tmp/key.asc" "$BAKERY_PGDG_KEY_URL"
    if ! gpg --show-keys --with-colons "$tmp/key.asc" | grep -q "^fpr:::::::::$want:"; then
        echo "postgresql: key from $BAKERY_PGDG_KEY_URL does not have fingerprint $want; refusing it" >&2
        exit 1
    fi
    gpg --dearmor < "$tmp/key.asc" > "$tmp/pgdg.gpg"
    install -d -m 0755 /etc/apt/keyrings
    install -m 0644 "$tmp/pgdg.gpg" "$keyring"
fi
# shellcheck source=/dev/null # the target system's release
. /etc/os-release
install-if-changed - /etc/apt/sources.list.d/pgdg.sources root:root 0644 <<SOURCES
Types: deb
URIs: $BAKERY_PGDG_MIRROR
Suites: ${VERSION_CODENAME}-pgdg
Components: main
Signed-By: $keyring
SOURCES
# New source: make sure the next install sees it.
if ! compgen -G "/var/lib/apt/lists/*pgdg*_Packages*" >/dev/null; then
    apt-get -q update
fi
