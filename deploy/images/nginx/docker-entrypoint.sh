#!/bin/sh
# Stand-in for the official nginx image's /docker-entrypoint.sh: when the command is nginx, run
# the executable /docker-entrypoint.d/*.sh in version order (source the *.envsh ones), then exec
# the command. NGINX_ENTRYPOINT_QUIET_LOGS=1 silences it.
set -eu

log() {
	if [ -z "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ]; then echo "$0: $*"; fi
}

if [ "${1:-}" = nginx ] || [ "${1:-}" = nginx-debug ]; then
	# No subshell (a `| while read` loop would be one), so sourced *.envsh files export to nginx.
	scripts=$(find /docker-entrypoint.d/ -follow -type f -print 2>/dev/null | sort -V)
	if [ -z "$scripts" ]; then
		log "No files found in /docker-entrypoint.d/, skipping configuration"
	else
		set -f
		old_ifs=$IFS
		IFS='
'
		for f in $scripts; do
			IFS=$old_ifs
			case $f in
			*.envsh | *.sh)
				if [ ! -x "$f" ]; then
					log "Ignoring $f, not executable"
				elif [ "${f%.envsh}" != "$f" ]; then
					log "Sourcing $f"
					# shellcheck disable=SC1090
					. "$f"
				else
					log "Launching $f"
					"$f"
				fi
				;;
			*) log "Ignoring $f" ;;
			esac
		done
		IFS=$old_ifs
		set +f
		log "Configuration complete; ready for start up"
	fi
fi

exec "$@"
