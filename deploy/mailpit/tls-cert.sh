#!/bin/sh
# Issues the STARTTLS certificate of the compose demo's next hop (Mailpit) from the
# development CA that `send-sikkert certs dev-init` made, so that the gateway's tunnel
# class (STARTTLS required, certificate verified against sepo.ca_file) can deliver to it.
# DEMO ONLY: the key is left readable for the Mailpit container.
#
#   tls-cert.sh CERTS_DIR NAME...   writes CERTS_DIR/mailpit/tls.pem (with the CA) and tls.key
#
# A certificate that is still good for 30 days and names the first NAME is kept.
set -eu

certs=$1
shift
: "${1:?name the host(s) the certificate is for, e.g. mailpit}"
out="$certs/mailpit"
ca="$certs/dev/ca.pem"
mkdir -p "$out"

if [ -s "$out/tls.pem" ] && [ -s "$out/tls.key" ] \
   && openssl verify -CAfile "$ca" "$out/tls.pem" > /dev/null 2>&1 \
   && openssl x509 -in "$out/tls.pem" -noout -checkend 2592000 > /dev/null \
   && openssl x509 -in "$out/tls.pem" -noout -checkhost "$1" | grep -q "does match"; then
    echo "tls-cert.sh: keeping $out/tls.pem"
    exit 0
fi

san=""
for name in "$@"; do
    san="$san${san:+,}DNS:$name"
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/ext" <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $san
EXT
openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$1" -keyout "$work/tls.key" \
        -out "$work/tls.csr" 2> /dev/null
openssl x509 -req -in "$work/tls.csr" -CA "$ca" -CAkey "$certs/dev/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days 730 -sha256 -extfile "$work/ext" \
        -out "$work/tls.crt" 2> /dev/null
cat "$work/tls.crt" "$ca" > "$out/tls.pem"
install -m 0644 "$work/tls.key" "$out/tls.key"
echo "tls-cert.sh: wrote $out/tls.pem for $san"
