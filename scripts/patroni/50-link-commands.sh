#!/bin/bash
# patroni and patronictl on PATH; Patroni's config directories for the node bundle.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

venv=$BAKERY_PATRONI_VENV
for command in patroni patronictl; do
    [ "$(readlink "/usr/local/bin/$command" || true)" = "$venv/bin/$command" ] ||
        ln -sfn "$venv/bin/$command" "/usr/local/bin/$command"
done
# The bundle writes patroni.yml, patroni.env and tls/ as postgres (docs/node-layout.md).
install -d -o postgres -g postgres -m 0750 /etc/patroni /etc/patroni/tls
