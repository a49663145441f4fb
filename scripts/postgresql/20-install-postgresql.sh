#!/bin/bash
# PostgreSQL server and contrib of one major version, without the packaged 'main' cluster:
# Patroni creates and owns the only cluster.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

install-packages postgresql-common
install-if-changed - /etc/postgresql-common/createcluster.d/90-bakery.conf root:root 0644 <<'CONF'
# bakery: Patroni creates the cluster; the package must not.
create_main_cluster = false
CONF
packages=("postgresql-$BAKERY_PG_MAJOR" postgresql-client-"$BAKERY_PG_MAJOR")
# From PostgreSQL 10 on, contrib is part of postgresql-N; pgdg still ships the metapackage.
if [ "$BAKERY_PG_SOURCE" = pgdg ]; then packages+=("postgresql-contrib"); fi
install-packages "${packages[@]}"

bin=/usr/lib/postgresql/$BAKERY_PG_MAJOR/bin
[ -x "$bin/postgres" ] || { echo "postgresql: $bin/postgres missing after install" >&2; exit 1; }
if [ -d "/etc/postgresql/$BAKERY_PG_MAJOR/main" ]; then
    echo "postgresql: a packaged cluster /etc/postgresql/$BAKERY_PG_MAJOR/main exists; the image must not have one" >&2
    exit 1
fi
