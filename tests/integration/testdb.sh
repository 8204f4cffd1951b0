#!/usr/bin/env bash
# testdb.sh run CMD...: start a throwaway Postgres container (the stack's own image, data on a
# tmpfs, published on a free 127.0.0.1 port), run CMD with TEST_DATABASE_URL pointing at it,
# then remove the container whatever CMD returned.
set -euo pipefail
[[ ${1:-} == run ]] || { echo "usage: testdb.sh run CMD..." >&2; exit 2; }
shift

image=${POSTGRES_IMAGE:?POSTGRES_IMAGE is not set (run through make)}
name="flaskstack-testdb-$$"
password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

cleanup() { docker rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT

docker run -d --name "$name" --user 999:999 --tmpfs /var/lib/postgresql/data:uid=999,gid=999 \
    --tmpfs /var/run/postgresql:uid=999,gid=999 \
    -e POSTGRES_USER=test -e POSTGRES_PASSWORD="$password" -e POSTGRES_DB=test \
    -p "127.0.0.1:$port:5432" "$image" postgres -c max_connections=200 -c fsync=off >/dev/null
for _ in $(seq 1 60); do
    if docker exec "$name" pg_isready -q -h 127.0.0.1 -U test -d test; then break; fi
    sleep 0.5
done
docker exec "$name" pg_isready -h 127.0.0.1 -U test -d test

export TEST_DATABASE_URL="postgresql+psycopg2://test:$password@127.0.0.1:$port/test"
echo "test database: postgresql://test:***@127.0.0.1:$port/test ($image)"
"$@"
