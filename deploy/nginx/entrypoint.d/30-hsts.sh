#!/bin/sh
# HSTS_MAX_AGE: the Strict-Transport-Security header HTTPS responses carry. 0 (the default with
# the local CA) sends none: a browser that trusted certs/ca.crt would otherwise force every
# http://localhost server on that machine to HTTPS for as long as the header said.
# Rendered into conf.d (a tmpfs) before nginx starts; snippets/response-headers.conf adds $hsts.
set -eu
age=${HSTS_MAX_AGE:-0}
case $age in
    '' | *[!0-9]*) echo "$0: HSTS_MAX_AGE must be a number of seconds, got '$age'" >&2; exit 1 ;;
esac
value=""
[ "$age" -gt 0 ] && value="max-age=$age"
cat >/etc/nginx/conf.d/hsts.conf <<CONF
# HSTS only on HTTPS responses, and only with HSTS_MAX_AGE > 0: add_header skips an empty value.
map \$scheme \$hsts {
    https "$value";
    default "";
}
CONF
