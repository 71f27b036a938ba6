#!/usr/bin/env bash
# Builds the libFuzzer drivers of tests/fuzz with clang 14 (ASan + UBSan) and runs each for a
# while, seeded with its checked-in corpus (read-only: new inputs go to a temporary directory).
#
#   scripts/fuzz.sh                  every target, FUZZ_SECONDS (default 30) each
#   scripts/fuzz.sh connstr jwt      only these targets
#   FUZZ_SECONDS=600 scripts/fuzz.sh
#   FUZZ_KEEP=1 scripts/fuzz.sh      keep the new inputs (printed at the end) for the corpus
#
# Exits non-zero when any target crashes, leaks or breaks an invariant, and prints where the
# crashing input was saved; replay it with build-fuzz/fuzz_<target> <file> (or, with gcc,
# build/replay_<target> <file>).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
seconds=${FUZZ_SECONDS:-30}
build=${FUZZ_BUILD_DIR:-$root/build-fuzz}
jobs=${JOBS:-2}
all_targets=(connstr identity jwt codec_integration codec_credentials twin_desired route b64 uuid
  config)
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=("${all_targets[@]}")
fi

if ! command -v clang-14 >/dev/null ||
  ! ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  echo "==> installing clang-14 and libclang-rt-14-dev"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq clang-14 libclang-rt-14-dev
fi

echo "==> configuring $build"
CC=clang-14 cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Debug -DIOTM_FUZZ=ON >/dev/null
build_targets=()
for t in "${targets[@]}"; do
  build_targets+=("fuzz_$t")
done
echo "==> building ${build_targets[*]}"
cmake --build "$build" -j"$jobs" --target "${build_targets[@]}"

work=$(mktemp -d "${TMPDIR:-/tmp}/iotm-fuzz.XXXXXX")
if [ -z "${FUZZ_KEEP:-}" ]; then
  trap 'rm -rf "$work"' EXIT
fi
failed=()
for t in "${targets[@]}"; do
  corpus="$root/tests/fuzz/corpus/$t"
  new="$work/$t/new"
  artifacts="$work/$t/artifacts"
  mkdir -p "$new" "$artifacts"
  dict=()
  if [ -f "$root/tests/fuzz/$t.dict" ]; then
    dict=(-dict="$root/tests/fuzz/$t.dict")
  fi
  echo "==> fuzz_$t for ${seconds}s"
  # The first corpus directory is where libFuzzer writes new inputs; the checked-in one follows
  # and is only read.
  if ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    "$build/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 "${dict[@]}" "$new" "$corpus" \
    >"$work/$t/log" 2>&1; then
    grep -E '^stat::(number_of_executed_units|new_units_added)' "$work/$t/log" | tr '\n' ' '
    echo
  else
    failed+=("$t")
    # a crash keeps its artifact even when the work directory is removed
    keep="$build/crashes/$t"
    mkdir -p "$keep"
    cp "$artifacts"/* "$keep"/ 2>/dev/null || true
    tail -n 60 "$work/$t/log"
    echo "!! fuzz_$t failed; crashing input(s):"
    ls -1 "$keep"/* 2>/dev/null | sed 's/^/     /'
    echo "   replay: $build/fuzz_$t <file>"
  fi
done

if [ -n "${FUZZ_KEEP:-}" ]; then
  echo "==> new inputs kept under $work/<target>/new"
fi
if [ "${#failed[@]}" -gt 0 ]; then
  echo "==> FAILED: ${failed[*]}"
  exit 1
fi
echo "==> no crash in ${targets[*]}"
