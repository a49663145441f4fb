#!/bin/bash
# The node reporter (bakery-reporter.service, enabled: BAKERY-NODE lines on the console) and the
# leader handover that patroni.service runs on stop, one stdlib-only program; the job status
# directory the reporter reads.
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -eu -o pipefail

files=$(dirname "$0")/files
install-if-changed "$files/bakery_node.py" /usr/lib/bakery/bakery-node root:root 0755
install-if-changed "$files/bakery-reporter.service" /etc/systemd/system/bakery-reporter.service root:root 0644
# Jobs (backups, stanza creation, ...) run as postgres and write <job>.json here.
install -d -o root -g postgres -m 0775 "$BAKERY_STATUS_DIR"
systemctl is-enabled --quiet bakery-reporter.service 2>/dev/null ||
    systemctl enable bakery-reporter.service
