#!/bin/sh
# Loads the certificates `send-sikkert certs dev-init` wrote (certs/directory/*.pem) into
# the demo directory: for each file one inetOrgPerson below o=Send Sikkert Demo,c=DK with
# the e-mail addresses the certificate names as `mail` and the certificate, in DER, as
# `userCertificate;binary`. An entry that is already there is replaced, so re-running after
# dev-init renewed a certificate is safe.
set -eu

url=${LDAP_URL:-ldap://ldap:389}
certs=${CERTS_DIR:-/certs/directory}
parent="o=Send Sikkert Demo,c=DK"
: "${LDAP_ROOT_PASSWORD:?set LDAP_ROOT_PASSWORD (the password of cn=admin,c=DK)}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077
printf '%s' "$LDAP_ROOT_PASSWORD" > "$work/password"  # -y: no password in `ps`
auth="-x -H $url -D cn=admin,c=DK -y $work/password"

count=0
for pem in "$certs"/*.pem; do
    [ -e "$pem" ] || break
    mails=$(openssl x509 -in "$pem" -noout -email | sort -u)
    first=$(printf '%s\n' "$mails" | head -n 1)
    if [ -z "$first" ]; then
        echo "seed.sh: skipping $pem: the certificate names no e-mail address" >&2
        continue
    fi
    count=$((count + 1))
    der="$work/$count.der"
    openssl x509 -in "$pem" -outform DER -out "$der"
    # RFC 4514: escape the characters that are special in a DN attribute value.
    rdn=$(printf '%s' "$first" | sed 's/[,+"\\<>;=]/\\&/g')
    dn="cn=$rdn,$parent"
    ldapdelete $auth "$dn" 2>/dev/null || true
    {
        echo "dn: $dn"
        echo "objectClass: inetOrgPerson"
        echo "cn: $first"
        echo "sn: $first"
        printf '%s\n' "$mails" | sed 's/^/mail: /'
        echo "userCertificate;binary:< file://$der"
    } | ldapadd $auth > /dev/null
    echo "seed.sh: $first <- $pem"
done

if [ "$count" -eq 0 ]; then
    echo "seed.sh: no certificates in $certs: run \`send-sikkert certs dev-init\` first" >&2
    exit 1
fi
