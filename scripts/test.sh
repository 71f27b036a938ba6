#!/usr/bin/env bash
# Runs every test: formatting check, unit tests (plain and ASan+UBSan builds, MongoDB adapter
# against a real MongoDB-wire server), the IoT Hub simulator's own tests and the black-box
# acceptance suite on both store backends. Installs what is missing first.
#
#   scripts/test.sh            everything
#   SKIP_ASAN=1 scripts/test.sh   without the sanitizer build (faster local runs)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=${JOBS:-2}

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
bash scripts/install-deps.sh

step "formatting (clang-format)"
mapfile -t c_files < <(git ls-files '*.c' '*.h' 2>/dev/null || find src include tests -name '*.[ch]')
if [ "${#c_files[@]}" -gt 0 ]; then
  clang-format --dry-run -Werror "${c_files[@]}"
fi

step "container files (static: no Docker engine here) and the device-side script"
bash scripts/check-docker.sh
bash tests/device/test_apply_script.sh

step "build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"

step "documentation generated from the code is current"
python3 scripts/gen-config-doc.py --check --bin build/iot-manager
/usr/bin/python3 scripts/gen-api-doc.py --check

# One MongoDB-wire server for the whole run (FerretDB unless mongod or a URL is given).
export IOT_MANAGER_BIN="$root/build/iot-manager"
export IOTHUB_SIM="$root/build/iothub-sim"
exec_tests() {
  step "unit tests"
  ctest --test-dir build --output-on-failure -j"$jobs"

  if [ -z "${SKIP_ASAN:-}" ]; then
    step "unit tests under AddressSanitizer + UndefinedBehaviorSanitizer"
    cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DIOTM_SANITIZE=ON >/dev/null
    cmake --build build-asan -j"$jobs"
    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      ctest --test-dir build-asan --output-on-failure -j"$jobs"
  fi

  # Debian's interpreter: its python3-pytest, -pymongo, -jsonschema and -yaml are installed by
  # install-deps.sh (a pyenv python earlier on PATH would lack them).
  step "IoT Hub simulator tests"
  IOTHUB_SIM="$root/build/iothub-sim" /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/sim

  step "acceptance tests (sqlite and mongo store)"
  /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/acceptance
}

if [ -n "${IOT_MANAGER_TEST_MONGO_URL:-}" ]; then
  exec_tests
else
  export -f exec_tests step
  export jobs root
  bash scripts/with-mongo.sh bash -c exec_tests
fi
