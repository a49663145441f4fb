#!/bin/bash
# psycopg2 (binary wheel, hash-checked) into Patroni's venv: Patroni's PostgreSQL driver.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

venv=$BAKERY_PATRONI_VENV
[ -x "$venv/bin/python" ] || { echo "psycopg2: no venv at $venv (patroni element runs first)" >&2; exit 1; }
line=$(grep -E "^psycopg2-binary==$BAKERY_PSYCOPG2_VERSION( |$)" "$BAKERY_PATRONI_LOCK" || true)
[ -n "$line" ] || { echo "psycopg2: $BAKERY_PATRONI_LOCK has no psycopg2-binary==$BAKERY_PSYCOPG2_VERSION" >&2; exit 1; }

installed=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("psycopg2-binary"))' 2>/dev/null || true)
if [ "$installed" != "$BAKERY_PSYCOPG2_VERSION" ]; then
    tmp=$(mktemp)
    trap 'rm -f "$tmp"' EXIT
    echo "$line" > "$tmp"
    "$venv/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check --require-hashes --no-deps -r "$tmp"
fi
"$venv/bin/python" -c 'import psycopg2; print("psycopg2", psycopg2.__version__)'
