#!/usr/bin/env bash
# Builds FerretDB v1.24.2 (MongoDB wire protocol on SQLite) from the Go module proxy and caches it.
# A plain `go install` yields a binary that panics at start (build/version/version.txt missing),
# so the module is copied, the version file written, and the binary built from that copy.
# Prints the path of the binary on stdout.
set -euo pipefail

version=v1.24.2
cache="${IOT_MANAGER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/iot-manager}"
bin="$cache/ferretdb-$version"

if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "build-ferretdb: Go is required (>= 1.24) to build FerretDB" >&2
  exit 1
fi

mkdir -p "$cache"
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

dir=$(go mod download -json "github.com/FerretDB/FerretDB@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
cp -r "$dir" "$work/src"
chmod -R u+w "$work/src"
echo "$version" > "$work/src/build/version/version.txt"
echo "build-ferretdb: building FerretDB $version (a few minutes, once)" >&2
(cd "$work/src" && CGO_ENABLED=0 go build -trimpath -tags ferretdb_no_postgresql -o "$bin.tmp" ./cmd/ferretdb)
mv "$bin.tmp" "$bin"
echo "$bin"
