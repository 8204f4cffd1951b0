#!/bin/sh
# acme.sh loop|once: the `acme` service (deploy/compose/acme.yml) keeps a certificate for DOMAIN
# from an ACME directory (ACME_DIRECTORY, Let's Encrypt by default) with lego, the ACME client,
# through the HTTP-01 challenge that nginx serves from the shared webroot.
#
#   once  Obtain the certificate when there is none (or DOMAIN or ACME_DIRECTORY changed), else
#         renew it when it expires within ACME_RENEW_DAYS (30); install a new one for nginx,
#         whose watcher reloads it. A failure leaves the installed certificate as it is and says
#         so. Run by hand (`docker compose exec acme sh /usr/local/bin/acme.sh once`), it asks at
#         once; the loop lets lego wait a random few minutes before a renewal, as lego advises
#         for automated renewals, so that not every client asks at the same moment.
#   loop  The same at start, then every ACME_CHECK_INTERVAL seconds (a day), or after
#         ACME_RETRY_INTERVAL (an hour) when it failed: Let's Encrypt allows 5 failed
#         validations per name and hour.
#
# Volumes: /acme lego's state (account key, certificates; this service only), /certs the pair
# nginx serves (server.crt, server.key: group ACME_CERT_GID, nginx's 101, may read the key),
# /srv/acme the challenge webroot. POSIX sh: it runs on the official lego image (Alpine's
# BusyBox) as on the Debian stand-in.
set -eu

: "${DOMAIN:?DOMAIN: the names to get a certificate for}"
: "${ACME_EMAIL:?ACME_EMAIL: the contact address for the ACME account (expiry notices)}"
directory=${ACME_DIRECTORY:-https://acme-v02.api.letsencrypt.org/directory}
renew_days=${ACME_RENEW_DAYS:-30}
interval=${ACME_CHECK_INTERVAL:-86400}
retry=${ACME_RETRY_INTERVAL:-3600}
gid=${ACME_CERT_GID:-101}
# The volumes' mount points (the tests point them elsewhere).
state=${ACME_STATE_DIR:-/acme}
certs=${ACME_CERTS_DIR:-/certs}
webroot=${ACME_WEBROOT:-/srv/acme}

names=$(printf '%s\n' "$DOMAIN" | tr ', ' '\n\n' | sed '/^$/d' | paste -sd ' ' -)
flags=""
for name in $names; do flags="$flags -d $name"; done
first=${names%% *}
crt=$state/certificates/$first.crt
key=$state/certificates/$first.key

log() { echo "acme: $*" >&2; }

# lego with the account, directory and challenge settings; then the command and its flags.
lego_() {
    # shellcheck disable=SC2086  # -d NAME pairs
    lego --accept-tos --email "$ACME_EMAIL" --server "$directory" --path "$state" \
        --key-type "${ACME_KEY_TYPE:-ec256}" --http --http.webroot "$webroot" $flags "$@"
}

# ", expires DATE" for the installed certificate, from lego's own list (by path: a certificate
# without a common name is listed with an empty name).
expiry() {
    lego --path "$state" list 2>/dev/null | awk -v path="$crt" '
        /Expiry Date:/ { sub(/.*Expiry Date: /, ""); date = $0 }
        /Certificate Path:/ && $NF == path { print ", expires " date; exit }'
}

# Copy lego's pair to /certs: key first, then certificate, each renamed into place, so nginx's
# watcher (it looks at the certificate) never loads half a pair.
install_pair() {
    if cmp -s "$crt" "$certs/server.crt" && cmp -s "$key" "$certs/server.key"; then
        log "the certificate for $names is current$(expiry)"
        return 0
    fi
    cp "$key" "$certs/.server.key.new"
    chgrp "$gid" "$certs/.server.key.new"
    chmod 640 "$certs/.server.key.new"
    cp "$crt" "$certs/.server.crt.new"
    chmod 644 "$certs/.server.crt.new"
    mv -f "$certs/.server.key.new" "$certs/server.key"
    mv -f "$certs/.server.crt.new" "$certs/server.crt"
    log "installed a new certificate for $names$(expiry); nginx reloads it"
}

# once [--no-random-sleep]
once() {
    action=obtain
    rc=0
    mkdir -p "$webroot/.well-known/acme-challenge"
    # A new list of names or another directory (staging, then production) gets a new certificate.
    if [ -f "$crt" ] && [ "$(cat "$state/issued-for" 2>/dev/null)" = "$directory $names" ]; then
        action=renew
        log "renewing the certificate for $names if it expires within $renew_days days ($directory)"
        lego_ renew --days "$renew_days" "$@" || rc=$?
    else
        log "obtaining a certificate for $names from $directory"
        lego_ run || rc=$?
    fi
    if [ "$rc" != 0 ]; then
        if [ -f "$certs/server.crt" ]; then
            log "FAILED to $action the certificate for $names (lego exited $rc, see above):" \
                "nginx keeps serving the installed one$(expiry)"
        else
            log "FAILED to $action the certificate for $names (lego exited $rc, see above):" \
                "HTTPS refuses handshakes until one is issued; check that DNS points every name" \
                "at this server and that port 80 reaches nginx"
        fi
        return 1
    fi
    echo "$directory $names" >"$state/issued-for"
    install_pair
}

# One lego at a time: the loop and a `docker compose exec acme sh /usr/local/bin/acme.sh once`.
locked_once() {
    exec 9>"${TMPDIR:-/tmp}/acme.lock"
    flock 9
    rc=0
    once "$@" || rc=$?
    exec 9>&-
    return "$rc"
}

case ${1:-loop} in
    once) locked_once --no-random-sleep ;;
    loop)
        while :; do
            if locked_once; then sleep "$interval"; else sleep "$retry"; fi
        done
        ;;
    *) echo "usage: acme.sh once|loop" >&2; exit 2 ;;
esac
