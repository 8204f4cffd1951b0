#!/usr/bin/env bash
# Stand-in for the official postgres image's docker-entrypoint.sh, the parts this stack uses:
# - `IMAGE -c k=v ...` means `postgres -c k=v ...`; any other command is exec'd as is.
# - Started as root, it prepares $PGDATA and re-runs itself as postgres (uid/gid 999).
# - An empty $PGDATA is initialised: superuser POSTGRES_USER (default postgres) with
#   POSTGRES_PASSWORD (scram-sha-256), database POSTGRES_DB (default: the user's name), then
#   /docker-entrypoint-initdb.d/*.sql, *.sql.gz and *.sh in name order, against a temporary
#   server that listens on the unix socket only, so nothing outside sees a half-made database.
#   POSTGRES_INITDB_ARGS and POSTGRES_HOST_AUTH_METHOD are honoured; every POSTGRES_* setting
#   can come from a file named by <NAME>_FILE (Docker secrets).
# - Connections: local (socket) trust; TCP from anywhere with a password (scram-sha-256).
set -Eeuo pipefail

log() { echo "docker-entrypoint.sh: $*"; }
die() { echo "docker-entrypoint.sh: error: $*" >&2; exit 1; }

# file_env VAR [DEFAULT]: VAR from the environment, else from the file $VAR_FILE, else DEFAULT.
file_env() {
	local var=$1 file_var=${1}_FILE default=${2:-} value
	if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then die "both $var and $file_var are set"; fi
	value=$default
	if [ -n "${!var:-}" ]; then
		value=${!var}
	elif [ -n "${!file_var:-}" ]; then
		value=$(<"${!file_var}")
	fi
	export "$var=$value"
	unset "$file_var"
}

# run_initdb AUTH [ARG...]: initdb for POSTGRES_USER, local trust, TCP with AUTH.
run_initdb() {
	local auth=$1
	shift
	# shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of arguments.
	initdb --username="$POSTGRES_USER" --auth-local=trust --auth-host="$auth" "$@" $POSTGRES_INITDB_ARGS
}

init_database() {
	file_env POSTGRES_PASSWORD
	file_env POSTGRES_USER postgres
	file_env POSTGRES_DB "$POSTGRES_USER"
	file_env POSTGRES_INITDB_ARGS
	local auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256} f
	if [ -z "$POSTGRES_PASSWORD" ] && [ "$auth" != trust ]; then
		die "database is uninitialized and POSTGRES_PASSWORD is not set (or set POSTGRES_HOST_AUTH_METHOD=trust)"
	fi

	log "initialising $PGDATA for user $POSTGRES_USER, database $POSTGRES_DB"
	# The password reaches initdb through a pipe, never argv; with none (trust), none is set.
	if [ -n "$POSTGRES_PASSWORD" ]; then
		run_initdb "$auth" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD")
	else
		run_initdb "$auth"
	fi
	printf '\n# Added by docker-entrypoint.sh: password logins over TCP from any address.\nhost all all all %s\n' \
		"$auth" >>"$PGDATA/pg_hba.conf"

	# Temporary server: unix socket only (listen_addresses=''), so health checks over TCP
	# (pg_isready -h 127.0.0.1) stay red until initialisation is over.
	pg_ctl --pgdata="$PGDATA" --wait --options="-c listen_addresses='' -p ${PGPORT:-5432}" start
	local psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
	if [ "$POSTGRES_DB" != postgres ]; then
		"${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
	fi
	for f in /docker-entrypoint-initdb.d/*; do
		case $f in
		*.sh)
			if [ -x "$f" ]; then
				log "running $f"
				"$f"
			else
				log "sourcing $f"
				# shellcheck disable=SC1090
				. "$f"
			fi
			;;
		*.sql) log "running $f" && "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
		*.sql.gz) log "running $f" && gunzip -c "$f" | "${psql[@]}" --dbname "$POSTGRES_DB" ;;
		*) [ ! -e "$f" ] || log "ignoring $f" ;;
		esac
	done
	pg_ctl --pgdata="$PGDATA" --wait --mode=fast stop
	log "initialisation complete; starting postgres"
}

case ${1:-} in -*) set -- postgres "$@" ;; esac

if [ "${1:-}" = postgres ]; then
	if [ "$(id -u)" = 0 ]; then
		# Root: own the data and socket directories, then drop to postgres for good.
		mkdir -p "$PGDATA" /var/run/postgresql
		find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
		chmod 0700 "$PGDATA"
		export HOME=/var/lib/postgresql
		exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
	fi
	if [ ! -s "$PGDATA/PG_VERSION" ]; then
		init_database
	fi
	# The password has done its job; keep it out of the server's environment.
	unset POSTGRES_PASSWORD
fi

exec "$@"
