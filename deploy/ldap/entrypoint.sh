#!/bin/sh
# Runs the demo certificate directory (OpenLDAP slapd) in the foreground. On the first
# start it builds cn=config from config.ldif and loads seed.ldif (c=DK and a demo
# organisation); the data then live in $LDAP_DATA_DIR (a volume) across restarts.
set -eu

here=$(dirname "$0")
data=${LDAP_DATA_DIR:-/var/lib/send-sikkert-ldap}
urls=${LDAP_URLS:-ldap:///}

if [ ! -d "$data/slapd.d" ]; then
    : "${LDAP_ROOT_PASSWORD:?set LDAP_ROOT_PASSWORD (the password of cn=admin,c=DK)}"
    mkdir -p "$data/slapd.d" "$data/data"
    hash=$(slappasswd -s "$LDAP_ROOT_PASSWORD")
    sed -e "s|@DATA_DIR@|$data|g" -e "s|@ROOT_PW@|$hash|g" "$here/config.ldif" > "$data/config.ldif"
    slapadd -n0 -F "$data/slapd.d" -l "$data/config.ldif"
    rm "$data/config.ldif"
    slapadd -n1 -F "$data/slapd.d" -l "$here/seed.ldif"
    chown -R openldap:openldap "$data"
fi

# -d keeps slapd in the foreground and logs connections and searches to stderr.
exec slapd -d "${LDAP_DEBUG:-stats}" -F "$data/slapd.d" -h "$urls" -u openldap -g openldap
