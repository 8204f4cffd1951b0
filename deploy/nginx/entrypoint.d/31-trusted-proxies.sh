#!/bin/sh
# TRUSTED_PROXIES: the load balancers or CDN in front of nginx (CIDRs, comma- or space-separated).
# A request from one of them has its client address taken from X-Forwarded-For (the rightmost
# address that is not itself a trusted proxy), so logs, the login rate limit and the app see the
# real client. From any other peer the header is ignored: nginx overwrites it with the peer's
# address (snippets/proxy.conf), so a client cannot choose its own address. Empty: no proxy is
# trusted.
set -eu
conf=/etc/nginx/conf.d/real-ip.conf
: >"$conf"
proxies=$(echo "${TRUSTED_PROXIES:-}" | tr ',' ' ')
[ -n "$(echo "$proxies" | tr -d ' ')" ] || exit 0
for cidr in $proxies; do
    case $cidr in
        *[!0-9a-fA-F.:/]*) echo "$0: TRUSTED_PROXIES: '$cidr' is not an address or CIDR" >&2; exit 1 ;;
    esac
    echo "set_real_ip_from $cidr;" >>"$conf"
done
cat >>"$conf" <<'CONF'
real_ip_header X-Forwarded-For;
real_ip_recursive on;
CONF
