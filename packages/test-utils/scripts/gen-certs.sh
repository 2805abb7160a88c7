#!/bin/sh
# Regenerates the TLS fixtures used by @pqcancel/test-utils (valid for 100 years).
#
#   ca.crt / ca.key                  test CA ("pqcancel test CA")
#   server.crt / server.key          CN=localhost, SAN DNS:localhost, IP:127.0.0.1, IP:::1, signed by ca
#   wrong-ca.crt / wrong-ca.key      an unrelated CA (verify-ca / verify-full failure tests)
#   client.crt / client.key          CN=postgres, for `cert` authentication, signed by ca
#   client-encrypted.key             the client key as encrypted PKCS#8, passphrase "secret"
#
# Usage: sh packages/test-utils/scripts/gen-certs.sh   (writes into packages/test-utils/fixtures)
set -eu

out="$(cd "$(dirname "$0")/.." && pwd)/fixtures"
mkdir -p "$out"
cd "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

days=36500

ca() { # name subject
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
    -keyout "$1.key" -out "$1.crt" -days "$days" -subj "$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

leaf() { # name subject extfile
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
    -keyout "$1.key" -out "$tmp/$1.csr" -subj "$2" 2>/dev/null
  openssl x509 -req -in "$tmp/$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -CAserial "$tmp/ca.srl" \
    -out "$1.crt" -days "$days" -sha256 -extfile "$3" 2>/dev/null
}

ca ca "/CN=pqcancel test CA"
ca wrong-ca "/CN=pqcancel wrong CA"

cat > "$tmp/server.ext" <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
EXT
leaf server "/CN=localhost" "$tmp/server.ext"

cat > "$tmp/client.ext" <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EXT
leaf client "/CN=postgres" "$tmp/client.ext"

openssl pkcs8 -topk8 -v2 aes-256-cbc -in client.key -out client-encrypted.key -passout pass:secret

chmod 0644 ./*.crt
chmod 0600 ./*.key
openssl verify -CAfile ca.crt server.crt client.crt
