#!/bin/bash
# The cloud builder VM's one job (started by its user-data's runcmd): unpack the elements the
# user-data wrote into /run/bakery, run them with the build's inputs, print exactly one
# BAKERY-RESULT line to the console, where `invoke bake` reads it through Nova's console log,
# and power the VM off, so that the bake can snapshot a disk that no longer changes.
#
# usage: builder-run --build-id ID [--dir DIR] [--console FILE] [--no-poweroff] ELEMENT...
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

finish() {  # on every way out, an unforeseen one included: a result line, then power off
    [ "$reported" = 1 ] || failed "builder-run ended early"
    sync
    if [ "$poweroff" = 1 ]; then
        systemctl poweroff || poweroff
    fi
}
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
