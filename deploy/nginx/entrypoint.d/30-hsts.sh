#!/bin/sh
# HSTS_MAX_AGE: the Strict-Transport-Security header HTTPS responses carry; 0 sends none. Empty:
# two years with DOMAIN (certificates a browser trusts), none with the local CA, where a browser
# that trusted certs/ca.crt would force every http://localhost server on that machine to HTTPS.
# Rendered into conf.d (a tmpfs) before nginx starts; snippets/response-headers.conf adds $hsts.
set -eu
age=${HSTS_MAX_AGE:-}
if [ -z "$age" ]; then
    if [ -n "${DOMAIN:-}" ]; then age=63072000; else age=0; fi
fi
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
