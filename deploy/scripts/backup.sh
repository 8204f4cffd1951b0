#!/usr/bin/env bash
# Backups of the stack's data (the bundled Postgres and the uploads volume), and their restore.
#
#   backup.sh backup            `make backup`: BACKUP_ROOT/<UTC time>/ with db.dump (pg_dump -Fc),
#                               uploads/ and manifest.json (each file's sha256, the migration
#                               revision); directories 700, files 600
#   backup.sh restore DIR       `make restore BACKUP=DIR [FORCE=1]`: verify everything, then
#                               restore into the running stack
#   backup.sh schedule          the loop of the scheduled service (the `backup` profile, BACKUP_SCHEDULE=1),
#                               inside a container of the Postgres image
#
# Both host commands work through `docker exec` in the stack's own containers: pg_dump and
# pg_restore run in the postgres container (Postgres stays unpublished), the uploads are read
# and written by an app container (the volume's owner, uid 10001). No container is added and
# no privilege granted.
set -euo pipefail

cd "$(dirname "$0")/../.."
export PROJECT=${PROJECT:-flaskstack} ENV_FILE=${ENV_FILE:-.env}
STACK=deploy/scripts/stack.sh
UPLOADS=/data/uploads
# Tables `flask setup-db` fills on every `make up` (and the migration marker): rows there are
# not "data" when restore decides whether a database is empty. An app of your own lists its
# own seed tables here.
SEED_TABLES=${BACKUP_SEED_TABLES:-alembic_version world fortune}

die() { echo "$*" >&2; exit 1; }
refuse() { echo "restore refused: $*" >&2; echo "nothing was changed." >&2; exit 1; }
now() { date -u +%Y-%m-%dT%H:%M:%SZ; }

# ---- manifest (shared by the host and the scheduled container) ---------------------------

json_string() {  # a file name as a JSON string; names with control characters are refused
    local s=$1
    [[ $s != *[[:cntrl:]]* ]] || die "cannot record a file name with control characters: $s"
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

write_manifest() {  # write_manifest DIR REVISION DUMP_STARTED_AT DATABASE
    local dir=$1 revision=$2 started=$3 database=$4 sep="" path sum size
    {
        printf '{\n  "format": 1,\n  "created_at": "%s",\n' "$(now)"
        printf '  "dump_started_at": "%s",\n  "database": %s,\n' "$started" "$(json_string "$database")"
        printf '  "revision": %s,\n  "files": {' "$(json_string "$revision")"
        while IFS= read -r -d '' path; do
            path=${path#./}
            sum=$(sha256sum < "$dir/$path" | cut -d' ' -f1)  # stdin: a name with a backslash would prefix the sum with one
            size=$(stat -c %s "$dir/$path")
            printf '%s\n    %s: {"sha256": "%s", "size": %s}' "$sep" "$(json_string "$path")" "$sum" "$size"
            sep=,
        done < <(cd "$dir" && find . -type f ! -name manifest.json -print0 | sort -z)
        printf '\n  }\n}\n'
    } > "$dir/manifest.json"
}

# ---- the host side: the running stack's containers ------------------------------------------

container() {  # the id of a running container of SERVICE (any replica), or nothing
    # docker ps by compose's labels: a tenth of the time `compose ps` takes to start.
    docker ps -q --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1" | head -n 1
}

require_stack() {  # sets PG and APP (container ids), DB and DB_USER, or explains what is missing
    if [[ -n $("$STACK" get DATABASE_URL) ]]; then
        die "DATABASE_URL is set: the database is your own, not the bundled Postgres this command
backs up. Use your provider's backups (snapshots, point-in-time recovery) for it; docs/backups.md."
    fi
    PG=$(container postgres)
    APP=$(container app)
    [[ -n $PG && -n $APP ]] || die "the stack $PROJECT is not running (postgres and app): make up first"
    read -r DB DB_USER < <(docker exec "$PG" sh -c 'echo "$POSTGRES_DB $POSTGRES_USER"')
    [[ $DB =~ ^[a-z_][a-z0-9_]*$ ]] || die "unexpected POSTGRES_DB name: $DB"
}

psql_in() {  # psql_in DATABASE [psql args]: psql in the postgres container (its local socket)
    local database=$1
    shift
    # No statement timeout: the stack's 15 s (PG_STATEMENT_TIMEOUT) is for requests, not this.
    docker exec -i -e PGOPTIONS="-c client_min_messages=warning -c statement_timeout=0" "$PG" \
        psql -X -q -v ON_ERROR_STOP=1 -At -U "$DB_USER" -d "$database" "$@"
}

live_revision() {
    psql_in "$DB" -c "SELECT version_num FROM alembic_version" 2>/dev/null \
        || die "cannot read the migration revision of database $DB (was it migrated? make up)"
}

backup() {
    local start=$SECONDS stamp partial final revision started
    BACKUP_ROOT=$("$STACK" get BACKUP_ROOT backups)
    require_stack
    umask 077
    mkdir -p "$BACKUP_ROOT"
    chmod 700 "$BACKUP_ROOT"
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    final=$BACKUP_ROOT/$stamp
    [[ ! -e $final ]] || die "$final exists already"
    # Written under a dot name and renamed at the end: a directory named like a backup is whole.
    partial=$BACKUP_ROOT/.partial-$stamp-$$
    trap 'rm -rf "$partial"' EXIT
    mkdir -p "$partial/uploads"

    revision=$(live_revision)
    started=$(now)
    # One snapshot: every row committed before pg_dump began is in the dump, none after.
    docker exec "$PG" pg_dump -Fc -U "$DB_USER" -d "$DB" > "$partial/db.dump"
    # After the dump: every upload a dumped row names was written before its row was committed.
    docker exec "$APP" tar -C "$UPLOADS" --exclude='./.*restore-*' -cf - . \
        | tar -C "$partial/uploads" -xf - --no-same-owner --no-same-permissions
    find "$partial" -type d -exec chmod 700 {} + -o -type f -exec chmod 600 {} +
    write_manifest "$partial" "$revision" "$started" "$DB"
    chmod 600 "$partial/manifest.json"
    mv "$partial" "$final"
    trap - EXIT
    echo "backup $final: $(du -sh "$final" | cut -f1), $(find "$final/uploads" -type f | wc -l) uploads," \
        "revision $revision, $((SECONDS - start)) s"
}

# ---- restore ------------------------------------------------------------------------------

data_summary() {  # what the live database and uploads hold beyond what `make up` seeds; empty if nothing
    local admin table rows summary="" files
    admin=$("$STACK" get ADMIN_USERNAME admin)
    # Rows per table of every schema but the system ones, counted up to 1001.
    while IFS='|' read -r table rows; do
        if [[ -z $table || " $SEED_TABLES " == *" $table "* ]]; then
            continue
        fi
        if [[ $table == users ]]; then  # the bootstrap admin is seeded too
            rows=$(psql_in "$DB" -v admin="${admin,,}" <<< \
                "SELECT count(*) FROM (SELECT FROM users WHERE username <> :'admin' LIMIT 1001) s")
        fi
        if (( rows > 1000 )); then
            summary+="$table over 1000, "
        elif (( rows > 0 )); then
            summary+="$table $rows, "
        fi
    done < <(psql_in "$DB" -F '|' <<'SQL'
SELECT c.relname,
       (xpath('/row/n/text()',
              query_to_xml(format('SELECT count(*) AS n FROM (SELECT FROM %I.%I LIMIT 1001) s',
                                  n.nspname, c.relname),
                           false, true, '')))[1]::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
SQL
    )
    files=$(docker exec "$APP" find "$UPLOADS" -mindepth 1 -type f | wc -l)
    if (( files > 0 )); then
        summary+="uploaded files $files, "
    fi
    [[ -z $summary ]] || echo "rows or files: ${summary%, }"
}

restore() {
    local dir=${1:-} start=$SECONDS revision held tag closed
    # Globals, not locals: the EXIT trap that reads them runs after this function has gone.
    stage="" old="" blocked=0 staged=0 swapped=0
    [[ -n $dir ]] || die "usage: make restore BACKUP=backups/<time> [FORCE=1]"
    [[ -d $dir ]] || refuse "$dir is not a directory"
    # One restore per stack at a time: a second one would switch databases under the first.
    # The lock is held until this process exits, however it ends.
    mkdir -p build
    exec 9>"build/restore-$PROJECT.lock"
    flock -n 9 || refuse "another restore of stack $PROJECT is running; wait for it to end"
    require_stack
    revision=$(live_revision)
    # Every check before anything is touched: the manifest, each file's size and sha256, no
    # unlisted file, the revision.
    python3 deploy/scripts/backup_manifest.py verify "$dir" --revision "$revision" \
        || { echo "nothing was changed." >&2; exit 1; }
    if [[ ${FORCE:-0} != 1 ]]; then
        held=$(data_summary)
        [[ -z $held ]] || refuse "database $DB of stack $PROJECT holds data ($held).
Restoring replaces all of it with the backup; run again with FORCE=1 to do that."
    fi

    tag=$(date -u +%Y%m%d%H%M%S)_$$
    stage=$UPLOADS/.restore-$tag
    old=$UPLOADS/.pre-restore-$tag
    # Undo whatever was done when any step fails: the live data stays as it was.
    rollback() {
        local undone=1
        echo "restore failed; putting the stack back as it was" >&2
        if (( swapped )); then
            docker exec "$APP" sh -c 'cd "$1" && find . -mindepth 1 -maxdepth 1 ! -name ".*restore-*" -exec rm -rf {} + \
                && find "$2" -mindepth 1 -maxdepth 1 -exec mv -t . {} + && rmdir "$2"' sh "$UPLOADS" "$old" || undone=0
        fi
        if (( staged )); then docker exec "$APP" rm -rf "$stage" || undone=0; fi
        psql_in postgres -c "DROP DATABASE IF EXISTS ${DB}_restore" || undone=0
        if (( blocked )); then psql_in postgres -c "ALTER DATABASE $DB ALLOW_CONNECTIONS true" || undone=0; fi
        if (( undone )); then
            echo "nothing was changed." >&2
        else
            echo "could not undo every step: check database $DB and the uploads volume" >&2
        fi
    }
    trap 'rollback' EXIT

    # 1. Stage the uploads beside the live ones (the app serves only names its rows hold).
    staged=1
    # A backup of an empty volume may have lost its empty uploads/ on the way (tar of nothing).
    if [[ -d $dir/uploads ]]; then tar -C "$dir/uploads" -cf - .; else tar -cf - -T /dev/null; fi \
        | docker exec -i "$APP" sh -c 'mkdir "$1" && tar -C "$1" -xf - \
        && find "$1" -type d -exec chmod 755 {} + -o -type f -exec chmod 644 {} +' sh "$stage"

    # 2. From here to the switch the replicas answer 503 database_unavailable: no request sees
    #    half-restored data, and no write is accepted only to be replaced.
    blocked=1
    psql_in postgres -c "DROP DATABASE IF EXISTS ${DB}_restore" -c "CREATE DATABASE ${DB}_restore" \
        -c "ALTER DATABASE $DB ALLOW_CONNECTIONS false" \
        -c "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '$DB'" >/dev/null
    closed=$SECONDS
    echo "verified and staged in $((SECONDS - start)) s; database $DB closed to the app, restoring"

    # 3. The dump into a database of its own, in one transaction: all of it or nothing. A dump
    #    holds no planner statistics: ANALYZE gathers them before the first query plans without.
    docker exec -i "$PG" sh -c 'pg_restore --single-transaction --exit-on-error --no-owner \
        --no-privileges -U "$1" -d "$2" && PGOPTIONS="-c statement_timeout=0" psql -X -q -U "$1" -d "$2" -c ANALYZE' \
        sh "$DB_USER" "${DB}_restore" < "$dir/db.dump"

    # 4. The uploads: the live ones aside, the staged ones in their place.
    docker exec "$APP" sh -c 'cd "$1" && mkdir "$3" && find . -mindepth 1 -maxdepth 1 ! -name ".*restore-*" -exec mv -t "$3" {} + \
        && find "$2" -mindepth 1 -maxdepth 1 -exec mv -t . {} + && rmdir "$2"' sh "$UPLOADS" "$stage" "$old"
    staged=0
    swapped=1

    # 5. The switch, one transaction: the restored database takes the live one's name.
    psql_in postgres -1 \
        -c "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '$DB'" \
        -c "ALTER DATABASE $DB RENAME TO ${DB}_pre_restore_$tag" \
        -c "ALTER DATABASE ${DB}_restore RENAME TO $DB" >/dev/null
    trap - EXIT
    echo "database $DB restored and open again after $((SECONDS - closed)) s"

    # 6. What was replaced goes.
    psql_in postgres -c "DROP DATABASE ${DB}_pre_restore_$tag WITH (FORCE)"
    docker exec "$APP" rm -rf "$old"
    echo "restored $dir into stack $PROJECT: revision $revision," \
        "$(find "$dir/uploads" -type f | wc -l) uploads, $((SECONDS - start)) s"
}

# ---- the scheduled service (inside a container of the Postgres image) ---------------------

schedule() {  # every BACKUP_INTERVAL s (0: once), keep the newest BACKUP_KEEP backups
    # The password arrives as a secret file (PGPASSWORD_FILE); libpq reads only PGPASSWORD.
    if [[ -z ${PGPASSWORD:-} && -n ${PGPASSWORD_FILE:-} ]]; then
        PGPASSWORD=$(cat "$PGPASSWORD_FILE")
        export PGPASSWORD
    fi
    local interval=${BACKUP_INTERVAL:-86400} keep=${BACKUP_KEEP:-7} root=/backups
    umask 077
    while true; do
        local stamp partial revision started
        stamp=$(date -u +%Y%m%dT%H%M%SZ)
        partial=$root/.partial-$stamp-$$
        mkdir -p "$partial/uploads"
        if revision=$(psql -X -At -c "SELECT version_num FROM alembic_version") \
            && started=$(now) \
            && pg_dump -Fc > "$partial/db.dump" \
            && tar -C "$UPLOADS" -cf - . | tar -C "$partial/uploads" -xf - --no-same-owner --no-same-permissions \
            && write_manifest "$partial" "$revision" "$started" "$PGDATABASE" \
            && mv "$partial" "$root/$stamp"; then
            echo "$(now) backup $root/$stamp: $(du -sh "$root/$stamp" | cut -f1)"
            # The newest `keep` survive; names sort by time.
            find "$root" -mindepth 1 -maxdepth 1 -type d -name '2*' -printf '%f\n' | sort -r \
                | tail -n +"$((keep + 1))" | while read -r name; do
                rm -rf "${root:?}/$name"
                echo "$(now) removed $root/$name (BACKUP_KEEP=$keep)"
            done
        else
            echo "$(now) backup failed" >&2
            rm -rf "$partial"
            (( interval > 0 )) || exit 1
        fi
        (( interval > 0 )) || exit 0
        sleep "$interval"
    done
}

cmd=${1:-}
shift || true
case $cmd in
    backup) backup ;;
    restore) restore "$@" ;;
    schedule) cd /; schedule ;;
    manifest) write_manifest "$@" ;;  # DIR REVISION DUMP_STARTED_AT DATABASE (for the unit tests)
    *) die "usage: backup.sh backup | restore DIR | schedule | manifest DIR REVISION STARTED DB" ;;
esac
