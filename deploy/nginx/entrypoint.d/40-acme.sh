#!/bin/sh
# DOMAIN: the names this site answers for (comma- or space-separated), with a certificate from an
# ACME directory that the `acme` service keeps in /etc/nginx/certs (deploy/compose/acme.yml).
# Renders nginx's server_name and the certificate to use, then starts a watcher that reloads
# nginx gracefully whenever the acme service replaces the certificate. Without DOMAIN: nothing.
set -eu
[ -n "$(echo "${DOMAIN:-}" | tr -d ', ')" ] || exit 0

# shellcheck disable=SC2046  # one name per word
set -- $(echo "$DOMAIN" | tr ',' ' ')
names=$*
for name in $names; do
    # HTTP-01 proves one name at a time: no wildcards, no addresses, no ports.
    case $name in
        *[!A-Za-z0-9.-]* | .* | *. | *..* | -* | *-)
            echo "$0: DOMAIN: '$name' is not a host name (wildcards need a DNS challenge)" >&2
            exit 1
            ;;
    esac
done

dir=/etc/nginx/conf.d/acme
mkdir -p "$dir"
echo "server_name $names;" >"$dir/server-name.conf"
/usr/local/bin/acme-certificate render

# The watcher: a child of nginx's master once the entrypoint execs nginx; its lines go to the
# container's log.
/usr/local/bin/acme-certificate watch &
