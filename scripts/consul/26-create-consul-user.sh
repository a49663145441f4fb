#!/bin/bash
# The consul system user and the directories of docs/node-layout.md.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

getent group consul >/dev/null || groupadd --system consul
getent passwd consul >/dev/null ||
    useradd --system --gid consul --home-dir /opt/consul --no-create-home --shell /usr/sbin/nologin consul
install -d -o consul -g consul -m 0750 /etc/consul.d /etc/consul.d/tls /opt/consul
