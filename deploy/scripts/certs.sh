#!/usr/bin/env bash
# certs.sh DIR [NAME...]: a local certificate authority and a server certificate for localhost,
# 127.0.0.1 and each NAME, for trying HTTPS on this machine. Clients trust DIR/ca.crt (curl --cacert).
# Not for production: mount a real certificate there instead.
set -euo pipefail
dir=${1:-certs}
shift || true
san=DNS:localhost,IP:127.0.0.1
for name in "$@"; do san+=,DNS:$name; done
mkdir -p "$dir"
cd "$dir"
if [[ -f server.crt && -f server.key && -f ca.crt ]]; then
    echo "certs: $dir/ already has ca.crt, server.crt and server.key (delete them to renew)"
    exit 0
fi
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 \
    -subj "/CN=flaskstack local CA" -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile server.ext -out server.crt 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 600 ca.key
# nginx runs as uid 101 and must read the key; nobody else may.
if [[ $(id -u) == 0 ]]; then
    chown 101:101 server.key
    chmod 400 server.key
else
    chmod 644 server.key
    echo "certs: not root, so server.key is world-readable; chown it to uid 101 in production" >&2
fi
echo "certs: wrote $dir/ca.crt (trust this), $dir/server.crt and $dir/server.key"
