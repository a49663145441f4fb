#!/bin/bash
# The cloud builder VM's one job (started by its user-data's runcmd): unpack the elements the
# user-data wrote into /run/bakery, run them with the build's inputs, print exactly one
# BAKERY-RESULT line to the console, where `invoke bake` reads it through Nova's console log,
# and power the VM off, so that the bake can snapshot a disk that no longer changes.
#
# The elements' generalize runs while the VM is still up: the rest of this boot (cloud-init's
# final stage, the random seed saved at shutdown, the journal) would write again after it. So
# before powering off, a unit that lives only in /run is started whose stop, late in the
# shutdown, generalizes once more (`builder-run --at-shutdown`).
#
# usage: builder-run --build-id ID [--dir DIR] [--console FILE] [--no-poweroff] ELEMENT...
#        builder-run --at-shutdown
if [ "${BAKERY_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
set -u -o pipefail  # no -e: whatever fails, a result line is printed and the VM powers off

dir=/run/bakery
console=/dev/console
poweroff=1
build_id=""
reported=0
elements=()

report() {  # one line to stdout (cloud-init's log) and to the console
    printf '%s\n' "$1"
    printf '%s\n' "$1" >> "$console"
    reported=1
}

failed() {  # a result line for failures before run-elements could print its own; fixed texts
    report "BAKERY-RESULT {\"status\":\"failed\",\"build_id\":\"$build_id\",\"manifest\":null,\"error\":\"$1\"}"
}

at_shutdown() {  # what this boot wrote after the generalize element, removed
    journalctl --relinquish-var 2>/dev/null || true  # journald writes to /run from here on
    cloud-init clean --logs --seed || true
    rm -f /var/lib/systemd/random-seed /var/lib/systemd/credential.secret /etc/ssh/ssh_host_*
    : > /etc/machine-id
    if [ -d /var/log/journal ]; then find /var/log/journal -mindepth 1 -delete; fi
    find /var/log -type f -exec truncate -s 0 {} +
    sync
}

generalize_at_shutdown_unit() {
    cat > /run/systemd/system/bakery-generalize-at-shutdown.service <<UNIT
[Unit]
Description=bakery builder: generalize once more when the last writers of this boot stopped
DefaultDependencies=no
RequiresMountsFor=/var/lib /var/log
# Stopped by the shutdown (and done before it goes on), after these have stopped: stop order
# is the reverse of start order.
Conflicts=shutdown.target
Before=shutdown.target
Before=cloud-final.service systemd-random-seed.service systemd-journal-flush.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop=/bin/bash $dir/builder-run --at-shutdown
TimeoutStopSec=120
UNIT
    systemctl daemon-reload && systemctl start bakery-generalize-at-shutdown.service
}

finish() {  # on every way out, an unforeseen one included: a result line, then power off
    [ "$reported" = 1 ] || failed "builder-run ended early"
    sync
    if [ "$poweroff" = 1 ]; then
        generalize_at_shutdown_unit || echo "builder-run: no generalization at shutdown" >&2
        systemctl poweroff || poweroff
    fi
}

if [ "${1:-}" = --at-shutdown ]; then
    at_shutdown
    exit 0
fi
trap finish EXIT

while [ $# -gt 0 ]; do
    case "$1" in
        --build-id|--dir|--console)
            [ $# -ge 2 ] || { build_id=unknown; failed "option $1 needs a value"; exit 2; }
            case "$1" in
                --build-id) build_id=$2 ;;
                --dir) dir=$2 ;;
                --console) console=$2 ;;
            esac
            shift 2 ;;
        --no-poweroff) poweroff=0; shift ;;
        *) elements+=("$1"); shift ;;
    esac
done

[[ "$build_id" =~ ^[A-Za-z0-9._-]+$ ]] || { build_id=unknown; failed "bad or missing --build-id"; exit 2; }
[ ${#elements[@]} -gt 0 ] || { failed "no elements given"; exit 2; }
# /run is noexec on Debian and Ubuntu, and the elements' helpers are run as programs: they get
# a tmpfs of their own at the same place (nothing of it reaches the disk that is snapshotted).
# The local bake's chroot has an executable /run already.
if findmnt -no OPTIONS --target "$dir" | tr ',' '\n' | grep -qx noexec; then
    stash=$(mktemp -d /run/bakery-payload.XXXXXX)
    if ! { cp -p "$dir/elements.tar.gz" "$dir/build.env" "$0" "$stash/" \
            && mount -t tmpfs -o mode=0700,size=1g bakery-build "$dir" \
            && cp -p "$stash"/* "$dir/" && rm -rf "$stash"; }; then
        failed "could not set up an executable staging"
        exit 1
    fi
fi
if ! tar -xzf "$dir/elements.tar.gz" -C "$dir"; then
    failed "could not unpack the elements"
    exit 1
fi
# The elements' output goes to cloud-init's log and console as it comes.
bash "$dir/run-elements" --env-file "$dir/build.env" "${elements[@]}" 2>&1 | tee "$dir/run-elements.log"
line=$(grep '^BAKERY-RESULT ' "$dir/run-elements.log" | tail -n 1)
if [ -z "$line" ]; then
    failed "run-elements printed no result line"
else
    report "$line"
fi
