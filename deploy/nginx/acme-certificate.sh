#!/bin/sh
# acme-certificate render|watch: which certificate nginx's HTTPS server uses when DOMAIN is set.
#
#   render  Write conf.d/acme/certificate.conf: the acme service's certificate and key when both
#           are there, else `ssl_reject_handshake on` (HTTPS refuses until the first certificate
#           exists; plain HTTP already serves the challenge that gets it).
#   watch   Every ACME_WATCH_INTERVAL seconds (default 5), compare the certificate with the one
#           nginx loaded; when it changed, render again, check the configuration (`nginx -t`) and
#           reload (`nginx -s reload`: new workers take new connections, old ones finish theirs,
#           so no connection is dropped). A pair that does not check (a key written before its
#           certificate) is tried again at the next look; nginx keeps serving the old one.
#
# Runs as nginx's own user: no Docker socket, no other container's processes.
set -eu
certs=${ACME_CERTS_DIR:-/etc/nginx/certs}
conf=${ACME_CONF_DIR:-/etc/nginx/conf.d/acme}/certificate.conf
# The fingerprint of the pair the last render gave nginx: the watcher starts from it, so a
# certificate installed between the render and the watcher's start is not missed.
loaded_file=${ACME_CONF_DIR:-/etc/nginx/conf.d/acme}/certificate.loaded
interval=${ACME_WATCH_INTERVAL:-5}

log() { echo "acme-certificate: $*" >&2; }

# A fingerprint of the pair on disk (empty when either is missing or unreadable).
fingerprint() {
    [ -r "$certs/server.crt" ] && [ -r "$certs/server.key" ] || return 0
    cat "$certs/server.crt" "$certs/server.key" | cksum
}

render() {
    fingerprint >"$loaded_file"
    if [ -s "$loaded_file" ]; then
        printf '%s\n' "ssl_certificate $certs/server.crt;" "ssl_certificate_key $certs/server.key;" >"$conf"
    else
        log "no certificate for ${DOMAIN:-} yet: HTTPS refuses handshakes until the acme service has one"
        echo "ssl_reject_handshake on;" >"$conf"
    fi
}

watch() {
    loaded=$(cat "$loaded_file" 2>/dev/null || true)
    failed=""
    while sleep "$interval"; do
        now=$(fingerprint)
        [ "$now" != "$loaded" ] || continue
        [ -n "$now" ] || continue  # a pair being replaced: the old one stays loaded
        render
        if out=$(nginx -t -q 2>&1); then
            nginx -s reload
            log "certificate changed: nginx reloaded gracefully, new connections get the new one"
            loaded=$now
            failed=""
        elif [ "$failed" != "$now" ]; then
            log "the new certificate does not load yet, nginx keeps the old one: $out"
            failed=$now
        fi
    done
}

case ${1:-} in
    render) render ;;
    watch) watch ;;
    *) echo "usage: $0 render|watch" >&2; exit 2 ;;
esac
