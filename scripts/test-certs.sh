#!/usr/bin/env bash
# Throwaway TLS material for the test services (scripts/kafka.sh, scripts/registry.sh), made with
# openssl in a new directory. EC P-256 keys (made in milliseconds), all PEM, keys unencrypted
# PKCS#8, certificates valid 30 days. Own minimal openssl configs, so the system's openssl.cnf
# does not matter.
#
#   scripts/test-certs.sh DIR            ca.pem ca.key          a test CA
#                                        server.pem server.key  server certificate signed by it,
#                                                               SAN IP:127.0.0.1 and DNS:localhost
#   scripts/test-certs.sh DIR --clients  also:
#        client.pem client.key              client certificate signed by ca (CN=touchstream-test-client)
#        other-ca.pem other-ca.key          an unrelated CA
#        other-client.pem other-client.key  client certificate signed by other-ca
set -euo pipefail
[[ $# -ge 1 && ${2:---clients} == --clients ]] || { echo "usage: $0 DIR [--clients]" >&2; exit 2; }
mkdir -p "$1"
cd "$1"

# new_key NAME: NAME.key
new_key() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null
}

# new_ca NAME CN: self-signed CA certificate NAME.pem and its key NAME.key
new_ca() {
  new_key "$1"
  openssl req -new -x509 -key "$1.key" -out "$1.pem" -days 30 -subj "/CN=$2" -config <(cat <<EOF
[req]
distinguished_name = dn
x509_extensions = ext
[dn]
[ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
)
}

# new_leaf NAME CN CA EXTRA_EXTENSION_LINES: NAME.pem signed by CA.pem/CA.key, and NAME.key
new_leaf() {
  new_key "$1"
  openssl req -new -key "$1.key" -subj "/CN=$2" -config <(printf '[req]\ndistinguished_name = dn\n[dn]\n') |
    openssl x509 -req -CA "$3.pem" -CAkey "$3.key" -set_serial "0x$(openssl rand -hex 8)" \
      -days 30 -out "$1.pem" -extfile <(cat <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
$4
EOF
) 2>/dev/null
}

new_ca ca "Touchstream test CA"
new_leaf server localhost ca $'extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1, DNS:localhost'
if [[ ${2:-} == --clients ]]; then
  new_leaf client touchstream-test-client ca 'extendedKeyUsage = clientAuth'
  new_ca other-ca "Touchstream other (untrusted) CA"
  new_leaf other-client touchstream-test-other-client other-ca 'extendedKeyUsage = clientAuth'
fi
