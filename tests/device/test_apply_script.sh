#!/usr/bin/env bash
# Tests the device-side mender-configure apply script
# examples/device/apply-device-config.d/50-azure-iot: each case runs it with a POSIX sh (dash on
# Debian; TEST_SH=... to choose another) against sample configuration files in a temporary root,
# in these modes: with jq, with the built-in parser forced (AZURE_IOT_NO_JQ=1), with no jq on PATH
# at all and, when busybox is installed, with nothing but busybox's shell and applets on PATH (as
# on a small Yocto image). Every run also checks that no connection string reached stdout or
# stderr.
#
#   tests/device/test_apply_script.sh        exit 0 when every check passed
set -u

repo=$(cd "$(dirname "$0")/../.." && pwd)
script=${APPLY_SCRIPT:-$repo/examples/device/apply-device-config.d/50-azure-iot}
sh_bin=$(command -v "${TEST_SH:-sh}") || { echo "no shell ${TEST_SH:-sh}" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/apply-script-test.XXXXXX")
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
ok() { passed=$((passed + 1)); printf 'ok    %s\n' "$1"; }
not_ok() { failed=$((failed + 1)); printf 'FAIL  %s%s\n' "$1" "${2:+: $2}"; }
check() { # check NAME COMMAND...: passes when COMMAND succeeds
    local name=$1
    shift
    if "$@"; then ok "$name"; else not_ok "$name"; fi
}

# Connection strings used below; none of them may ever show up in the script's output.
cs1='HostName=hub-one.azure-devices.net;DeviceId=dev-1;SharedAccessKey=c2VjcmV0LW9uZS1YcTd2Wm1LcA=='
cs2='HostName=hub-one.azure-devices.net;DeviceId=dev-1;SharedAccessKey=c2VjcmV0LXR3by1OdzRqUjJoTQ=='
cs3='HostName=hub-two.azure-devices.net;DeviceId=dev-1;SharedAccessKey=c2VjcmV0LXRocmVlLUs4cFo1dA=='
secrets=("$cs1" "$cs2" "$cs3" "c2VjcmV0LW9uZS1YcTd2Wm1LcA" "c2VjcmV0LXR3by1OdzRqUjJoTQ"
    "c2VjcmV0LXRocmVlLUs4cFo1dA" "b-escaped-key")

cfg=$work/configs
mkdir -p "$cfg"
printf '{"azureConnectionString":"%s"}\n' "$cs1" >"$cfg/cs1.json"
printf '{"timezone":"Europe/Oslo","azureConnectionString":"%s","other":"x"}' "$cs2" >"$cfg/cs2.json"
# The same value as cs2.json, pretty-printed, with the key in another position.
cat >"$cfg/cs2-pretty.json" <<JSON
{
  "azureConnectionString" : "$cs2",
  "timezone": "Europe/Oslo",
  "other": "x"
}
JSON
printf '{"azureConnectionString":"%s"}' "$cs3" >"$cfg/cs3.json"
echo '{"timezone":"UTC"}' >"$cfg/absent.json"
echo '{}' >"$cfg/empty-object.json"
echo '{"azureConnectionString":null,"timezone":"UTC"}' >"$cfg/null.json"
echo '{"azureConnectionString":""}' >"$cfg/empty-value.json"
printf '{"azureConnectionString":"%s"' "$cs1" >"$cfg/truncated.json"
echo 'azureConnectionString=HostName=x' >"$cfg/not-json.txt"
printf '["azureConnectionString","%s"]\n' "$cs1" >"$cfg/array.json"
: >"$cfg/empty-file.json"
echo '{"azureConnectionString":42}' >"$cfg/number.json"
echo '{"azureConnectionString":{"HostName":"x"}}' >"$cfg/object-value.json"
# jq decodes escapes; the built-in parser refuses them.
echo '{"azureConnectionString":"HostName=h.azure-devices.net;DeviceId=d\/1;SharedAccessKey=b-escaped-key"}' >"$cfg/escaped.json"
printf '%s\n' '{"azureConnectionString":"HostName=h;SharedAccessKey=b-escaped-key\nX"}' >"$cfg/newline.json"
echo '{} {}' >"$cfg/two-docs.json"

# A PATH with the tools the script uses, but no jq.
nojq_bin=$work/nojq-bin
mkdir -p "$nojq_bin"
for tool in sh tr sed grep cat mkdir chmod chown mv rm sync env; do
    ln -s "$(command -v "$tool")" "$nojq_bin/$tool"
done

# A PATH of busybox applets only, like a minimal device image.
busybox_bin=""
if command -v busybox >/dev/null 2>&1; then
    busybox_bin=$work/busybox-bin
    mkdir -p "$busybox_bin"
    for tool in sh tr sed grep cat mkdir chmod chown mv rm sync env; do
        ln -s "$(command -v busybox)" "$busybox_bin/$tool"
    done
fi

root=""
rc=0
out=""
err=""
mode_env=()

new_root() {
    root=$(mktemp -d "$work/root.XXXXXX")
}

# run CONFIG [VAR=value...]: runs the script in $root with the current mode; the default restart
# command appends a line to $root/restarts.
run() {
    local config=$1
    shift
    out=$root/stdout
    err=$root/stderr
    env AZURE_IOT_ROOT="$root" \
        AZURE_IOT_RESTART_COMMAND="printf 'restart\\n' >>'$root/restarts'" \
        "${mode_env[@]}" "$@" "$sh_bin" "$script" "$config" >"$out" 2>"$err"
    rc=$?
    local s
    for s in "${secrets[@]}"; do
        if grep -qF -- "$s" "$out" "$err"; then
            not_ok "$mode_name: a connection string appeared in the output (${config##*/})"
            return
        fi
    done
}

target() { printf '%s/etc/azure-iot/connection-string' "$root"; }
restarts() { if [ -f "$root/restarts" ]; then wc -l <"$root/restarts" | tr -d ' '; else echo 0; fi; }
content_is() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }
mode_is_0600() { [ "$(stat -c %a "$1")" = 600 ]; }
inode() { stat -c %i "$1"; }
no_leftovers() { [ "$(find "$root/etc/azure-iot" -mindepth 1 -name '*.tmp.*' | wc -l)" = 0 ]; }
nothing_written() { [ ! -e "$(target)" ] && [ "$(restarts)" = 0 ]; }
failed_cleanly() { [ "$rc" != 0 ] && [ "$rc" != 20 ] && nothing_written; }

run_mode() {
    mode_name=$1
    shift
    mode_env=("$@")
    local name=$mode_name ino

    # Key present: written 0600 with the exact value, restart run once.
    new_root
    run "$cfg/cs1.json"
    check "$name: first apply exits 0" [ "$rc" = 0 ]
    check "$name: file holds the exact value" content_is "$(target)" "$cs1"
    check "$name: file mode is 0600" mode_is_0600 "$(target)"
    check "$name: restart command ran once" [ "$(restarts)" = 1 ]
    check "$name: no temporary file left" no_leftovers
    check "$name: stdout stays empty" [ ! -s "$out" ]
    ino=$(inode "$(target)")

    # Same configuration again: no write, no restart.
    run "$cfg/cs1.json"
    check "$name: unchanged value exits 0" [ "$rc" = 0 ]
    check "$name: unchanged value is not rewritten" [ "$(inode "$(target)")" = "$ino" ]
    check "$name: unchanged value does not restart" [ "$(restarts)" = 1 ]

    # Changed value (with other keys around it): rewrite and restart.
    run "$cfg/cs2.json"
    check "$name: changed value exits 0" [ "$rc" = 0 ]
    check "$name: changed value is written" content_is "$(target)" "$cs2"
    check "$name: changed value keeps mode 0600" mode_is_0600 "$(target)"
    check "$name: changed value restarts once more" [ "$(restarts)" = 2 ]
    check "$name: changed value replaced the file" [ "$(inode "$(target)")" != "$ino" ]

    # The same value, pretty-printed: recognised as unchanged.
    run "$cfg/cs2-pretty.json"
    check "$name: pretty-printed same value exits 0" [ "$rc" = 0 ]
    check "$name: pretty-printed same value does not restart" [ "$(restarts)" = 2 ]

    # Key absent, null or empty: nothing to do.
    local c
    for c in absent empty-object null empty-value; do
        new_root
        run "$cfg/$c.json"
        check "$name: $c exits 0" [ "$rc" = 0 ]
        check "$name: $c writes and restarts nothing" nothing_written
        check "$name: $c logs nothing to do" grep -q "nothing to do" "$err"
    done

    # An absent key leaves an existing file alone (the docs: scripts no-op without their key).
    new_root
    run "$cfg/cs1.json"
    run "$cfg/absent.json"
    check "$name: absent key keeps the previous file" content_is "$(target)" "$cs1"
    check "$name: absent key does not restart" [ "$(restarts)" = 1 ]

    # Malformed configurations fail, with nothing written.
    for c in truncated.json not-json.txt array.json number.json object-value.json; do
        new_root
        run "$cfg/$c"
        check "$name: $c fails cleanly (rc=$rc)" failed_cleanly
    done

    # Reboot mode: 20 on change, 0 without, never the restart command.
    new_root
    run "$cfg/cs1.json" AZURE_IOT_REBOOT_ON_CHANGE=1
    check "$name: reboot mode, new value exits 20" [ "$rc" = 20 ]
    check "$name: reboot mode writes the value" content_is "$(target)" "$cs1"
    run "$cfg/cs1.json" AZURE_IOT_REBOOT_ON_CHANGE=1
    check "$name: reboot mode, same value exits 0" [ "$rc" = 0 ]
    run "$cfg/cs3.json" AZURE_IOT_REBOOT_ON_CHANGE=1
    check "$name: reboot mode, changed value exits 20" [ "$rc" = 20 ]
    check "$name: reboot mode, changed value written" content_is "$(target)" "$cs3"
    check "$name: reboot mode never runs the restart command" [ "$(restarts)" = 0 ]

    # A failed restart fails the apply and is retried by the next run with the same value.
    new_root
    run "$cfg/cs1.json" AZURE_IOT_RESTART_COMMAND="exit 3"
    check "$name: failed restart exits 1" [ "$rc" = 1 ]
    check "$name: failed restart still wrote the value" content_is "$(target)" "$cs1"
    run "$cfg/cs1.json"
    check "$name: retry after a failed restart exits 0" [ "$rc" = 0 ]
    check "$name: retry after a failed restart restarts once" [ "$(restarts)" = 1 ]
    run "$cfg/cs1.json"
    check "$name: after the retry, no further restart" [ "$(restarts)" = 1 ]

    # An empty restart command disables the restart.
    new_root
    run "$cfg/cs1.json" AZURE_IOT_RESTART_COMMAND=
    check "$name: empty restart command exits 0" [ "$rc" = 0 ]
    check "$name: empty restart command still writes" content_is "$(target)" "$cs1"

    # The restart command's environment carries no connection string, even when the caller
    # exported a variable named like the script's own.
    new_root
    run "$cfg/cs1.json" value=inherited AZURE_IOT_RESTART_COMMAND="env >'$root/restart-env'"
    # shellcheck disable=SC2016  # expanded by the inner bash
    check "$name: restart environment has no connection string" \
        bash -c '[ -s "$2" ] && ! grep -qF -- "$1" "$2"' _ "c2VjcmV0LW9uZS1YcTd2Wm1LcA" "$root/restart-env"

    # Another target file, given directly and through the defaults file.
    new_root
    run "$cfg/cs1.json" AZURE_IOT_CONNECTION_STRING_FILE=/opt/app/conf/cs
    check "$name: custom target file written" content_is "$root/opt/app/conf/cs" "$cs1"
    check "$name: custom target file is 0600" mode_is_0600 "$root/opt/app/conf/cs"
    new_root
    mkdir -p "$root/etc/default"
    echo 'AZURE_IOT_CONNECTION_STRING_FILE=/srv/azure/cs' >"$root/etc/default/azure-iot-configure"
    run "$cfg/cs1.json"
    check "$name: defaults file sets the target" content_is "$root/srv/azure/cs" "$cs1"

    # Owner setting (to the current user, the only one a non-root test can use).
    new_root
    run "$cfg/cs1.json" AZURE_IOT_CONNECTION_STRING_OWNER="$(id -u):$(id -g)"
    check "$name: owner setting accepted" [ "$rc" = 0 ]

    # The target's directory cannot be created: failure, no restart.
    new_root
    mkdir -p "$root/etc"
    : >"$root/etc/azure-iot"
    run "$cfg/cs1.json"
    check "$name: unwritable target fails" [ "$rc" = 1 ]
    check "$name: unwritable target does not restart" [ "$(restarts)" = 0 ]

    # Usage and missing file.
    new_root
    env "${mode_env[@]}" "$sh_bin" "$script" >/dev/null 2>&1
    check "$name: no argument is a usage error (2)" [ "$?" = 2 ]
    run "$root/does-not-exist.json"
    check "$name: missing configuration fails" [ "$rc" = 1 ]
}

run_mode "jq" AZURE_IOT_NO_JQ=0
run_mode "fallback (AZURE_IOT_NO_JQ=1)" AZURE_IOT_NO_JQ=1
run_mode "fallback (no jq on PATH)" PATH="$nojq_bin"
if [ -n "$busybox_bin" ]; then
    sh_bin=$busybox_bin/sh
    run_mode "busybox sh and applets only" PATH="$busybox_bin"
    sh_bin=$(command -v "${TEST_SH:-sh}")
else
    echo "skip  busybox mode (busybox not installed)"
fi

# Where the two parsers differ by design (documented limits of the fallback).
mode_name=jq
mode_env=(AZURE_IOT_NO_JQ=0)
new_root
run "$cfg/escaped.json"
check "jq: JSON escapes are decoded" \
    content_is "$(target)" 'HostName=h.azure-devices.net;DeviceId=d/1;SharedAccessKey=b-escaped-key'
for c in newline.json two-docs.json empty-file.json; do
    new_root
    run "$cfg/$c"
    check "jq: $c fails cleanly (rc=$rc)" failed_cleanly
done
mode_name=fallback
mode_env=(AZURE_IOT_NO_JQ=1)
for c in escaped.json newline.json empty-file.json; do
    new_root
    run "$cfg/$c"
    check "fallback: $c is refused (rc=$rc)" failed_cleanly
done

if command -v shellcheck >/dev/null 2>&1; then
    check "shellcheck -s sh" shellcheck -s sh "$script"
else
    echo "skip  shellcheck (not installed)"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
