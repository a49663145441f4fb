#!/bin/bash
# Packages every node needs, plus the definition's extra packages.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

# shellcheck disable=SC2086 # a space-separated list by contract
install-packages ca-certificates curl python3 $BAKERY_EXTRA_PACKAGES
