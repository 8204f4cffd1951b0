#!/bin/sh
# The one-shot `monitor-role` (the monitoring profile, with the bundled Postgres): create or update the
# Postgres exporter's role with monitor-role.sql. Passwords come from the environment, or on
# Swarm from the files named by <KEY>_FILE (Swarm secrets).
set -eu
PGPASSWORD=${POSTGRES_PASSWORD:-$(cat "${POSTGRES_PASSWORD_FILE:?POSTGRES_PASSWORD is not set}")}
MONITOR_PASSWORD=${POSTGRES_MONITOR_PASSWORD:-$(cat "${POSTGRES_MONITOR_PASSWORD_FILE:?POSTGRES_MONITOR_PASSWORD is not set}")}
export PGPASSWORD MONITOR_PASSWORD
exec psql -v ON_ERROR_STOP=1 -q -f "$(dirname "$0")/monitor-role.sql"
