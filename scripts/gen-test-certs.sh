#!/usr/bin/env bash
# Generates a throwaway test CA and a server certificate for localhost / 127.0.0.1 / ::1,
# signed by it, for the IoT Hub simulator and other local TLS tests.
#
#   scripts/gen-test-certs.sh DIR
#
# Writes DIR/ca.pem, DIR/ca.key, DIR/server.pem, DIR/server.key. Idempotent: files already
# present are kept (a CA is reused to sign a missing server certificate). Test use only.
set -euo pipefail

if [ "$#" -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
dir=$1
mkdir -p "$dir"
umask 077

if [ ! -s "$dir/ca.pem" ] || [ ! -s "$dir/ca.key" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
    -days 3650 -subj "/CN=iot-manager test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$dir/ca.key.tmp" -out "$dir/ca.pem.tmp" 2>/dev/null
  mv "$dir/ca.key.tmp" "$dir/ca.key"
  mv "$dir/ca.pem.tmp" "$dir/ca.pem"
  rm -f "$dir/server.pem" # a new CA invalidates the old server certificate
fi

if [ ! -s "$dir/server.pem" ] || [ ! -s "$dir/server.key" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  cat >"$tmp/ext.cnf" <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
EOF
  # RSA rather than EC for the leaf: GnuTLS (libmicrohttpd's TLS) and every client accept it.
  openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=localhost" \
    -keyout "$tmp/server.key" -out "$tmp/server.csr" 2>/dev/null
  openssl x509 -req -in "$tmp/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -CAserial "$tmp/ca.srl" -days 3650 -sha256 \
    -extfile "$tmp/ext.cnf" -out "$tmp/server.pem" 2>/dev/null
  mv "$tmp/server.key" "$dir/server.key"
  mv "$tmp/server.pem" "$dir/server.pem"
fi
chmod 644 "$dir/ca.pem" "$dir/server.pem"
