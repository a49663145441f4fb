#!/bin/bash
# Consul's release zip, downloaded or taken from an offline artifacts directory, installed only
# if its SHA-256 is the pinned one: any mismatch fails the build.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

version=$BAKERY_CONSUL_VERSION
want=$(echo "$BAKERY_CONSUL_SHA256" | tr '[:upper:]' '[:lower:]')
[[ "$want" =~ ^[0-9a-f]{64}$ ]] || { echo "consul: BAKERY_CONSUL_SHA256 is not a SHA-256: '$BAKERY_CONSUL_SHA256'" >&2; exit 1; }
arch=$(dpkg --print-architecture)
zip=consul_${version}_linux_${arch}.zip
binary=/usr/local/bin/consul
marker=/usr/local/share/bakery/consul.sha256

# Installed from the same verified zip before: nothing to do.
if [ -x "$binary" ] && [ "$(cat "$marker" 2>/dev/null || true)" = "$want  $zip" ]; then
    echo "consul: $version already installed from $zip ($want)"
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -n "$BAKERY_CONSUL_ARTIFACTS_DIR" ]; then
    [ -f "$BAKERY_CONSUL_ARTIFACTS_DIR/$zip" ] ||
        { echo "consul: offline artifact $BAKERY_CONSUL_ARTIFACTS_DIR/$zip not found" >&2; exit 1; }
    cp "$BAKERY_CONSUL_ARTIFACTS_DIR/$zip" "$tmp/$zip"
    origin=$BAKERY_CONSUL_ARTIFACTS_DIR/$zip
else
    url=${BAKERY_CONSUL_URL:-https://releases.hashicorp.com/consul/$version/$zip}
    curl -fsSL --retry 3 --connect-timeout 20 --max-time 600 -o "$tmp/$zip" "$url"
    origin=$url
fi
got=$(sha256sum "$tmp/$zip" | awk '{print $1}')
if [ "$got" != "$want" ]; then
    echo "consul: SHA-256 MISMATCH for $origin: expected $want, got $got; refusing to install it" >&2
    exit 1
fi
python3 - "$tmp/$zip" "$tmp/consul" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("consul"))
PY
install -D -o root -g root -m 0755 "$tmp/consul" "$binary"
reported=$("$binary" version | awk 'NR == 1')  # awk reads all: no SIGPIPE
[ "$reported" = "Consul v$version" ] || { echo "consul: $binary reports '$reported', want 'Consul v$version'" >&2; exit 1; }
install -d -m 0755 "$(dirname "$marker")"
echo "$want  $zip" > "$marker"
echo "consul: installed $version from $origin (sha256 $got)"
