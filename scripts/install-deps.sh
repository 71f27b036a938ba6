#!/usr/bin/env bash
# Installs every Debian package the build, the tests and the local stack need.
# Idempotent: packages already present are skipped, so a warm machine pays nothing.
set -euo pipefail

packages=(
  build-essential cmake pkg-config clang-format
  libmicrohttpd-dev libcurl4-openssl-dev libjansson-dev libssl-dev
  libmongoc-dev libbson-dev libnats-dev libsqlite3-dev sqlite3 libyaml-dev libjwt-dev
  libcmocka-dev nats-server openssl curl ca-certificates wrk jq
  docker-compose shellcheck busybox
  python3 python3-pytest python3-yaml python3-requests python3-jsonschema python3-pymongo
  python3-cryptography
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

# npm (static checks of the Dockerfile) comes with Node.js on most machines; Debian's package
# conflicts with other Node.js builds, so it is installed only when there is no npm at all.
if ! command -v npm >/dev/null 2>&1; then
  missing+=(npm)
fi

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
