#!/bin/sh
# Regenerates the TLS fixtures used by @pqcancel/test-utils (valid for 100 years).
#
#   ca.crt / ca.key                  test CA ("pqcancel test CA")
#   server.crt / server.key          CN=localhost, SAN DNS:localhost, IP:127.0.0.1, IP:::1, signed by ca
#   wrong-ca.crt / wrong-ca.key      an unrelated CA (verify-ca / verify-full failure tests)
#   impostor.crt / impostor.key      the server's names (CN=localhost, same SANs) signed by wrong-ca: an impostor
#                                    server a verifying client must reject (a usable server certificate, unlike
#                                    wrong-ca.crt, which BoringSSL (Bun) refuses to serve: no digitalSignature usage)
#   client.crt / client.key          CN=postgres, for `cert` authentication, signed by ca
#   client-encrypted.key             the client key as encrypted PKCS#8, passphrase "secret"
#   empty.crl / server-revoked.crl   CRLs of ca: nothing revoked / server.crt revoked (sslcrl tests)
#
# Usage: sh packages/test-utils/scripts/gen-certs.sh       (everything, into packages/test-utils/fixtures)
#        sh packages/test-utils/scripts/gen-certs.sh crl   (only the CRLs, for the existing CA and server cert)
set -eu

out="$(cd "$(dirname "$0")/.." && pwd)/fixtures"
mkdir -p "$out"
cd "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

days=36500

crls() {
  cat > "$tmp/ca.cnf" <<CNF
[ ca ]
default_ca = test
[ test ]
database = $tmp/index.txt
crlnumber = $tmp/crlnumber
default_md = sha256
default_crl_days = $days
CNF
  : > "$tmp/index.txt"
  echo 01 > "$tmp/crlnumber"
  openssl ca -config "$tmp/ca.cnf" -keyfile ca.key -cert ca.crt -gencrl -out empty.crl 2>/dev/null
  openssl ca -config "$tmp/ca.cnf" -keyfile ca.key -cert ca.crt -revoke server.crt 2>/dev/null
  openssl ca -config "$tmp/ca.cnf" -keyfile ca.key -cert ca.crt -gencrl -out server-revoked.crl 2>/dev/null
  chmod 0644 ./*.crl
}

if [ "${1:-}" = "crl" ]; then
  crls
  exit 0
fi

ca() { # name subject
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
    -keyout "$1.key" -out "$1.crt" -days "$days" -subj "$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

leaf() { # name subject extfile [issuer, default ca]
  issuer="${4:-ca}"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
    -keyout "$1.key" -out "$tmp/$1.csr" -subj "$2" 2>/dev/null
  openssl x509 -req -in "$tmp/$1.csr" -CA "$issuer.crt" -CAkey "$issuer.key" -CAcreateserial \
    -CAserial "$tmp/$issuer.srl" -out "$1.crt" -days "$days" -sha256 -extfile "$3" 2>/dev/null
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
leaf impostor "/CN=localhost" "$tmp/server.ext" wrong-ca

cat > "$tmp/client.ext" <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EXT
leaf client "/CN=postgres" "$tmp/client.ext"

openssl pkcs8 -topk8 -v2 aes-256-cbc -in client.key -out client-encrypted.key -passout pass:secret

chmod 0644 ./*.crt
chmod 0600 ./*.key
crls
openssl verify -CAfile ca.crt server.crt client.crt
openssl verify -CAfile wrong-ca.crt impostor.crt
