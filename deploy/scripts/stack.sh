#!/usr/bin/env bash
# Stack operations the Makefile calls: compose detection, env creation, health waits, rollout.
# Works with `docker compose` (v2) and `docker-compose` (1.29, which lacks `up --wait`).
set -euo pipefail

PROJECT=${PROJECT:-flaskstack}
ENV_FILE=${ENV_FILE:-.env}

COMPOSE_DIR=deploy/compose

compose_files() {  # the compose files the settings ask for, ':'-separated as COMPOSE_FILE
    local files=docker-compose.yml extra
    [[ -n $(env_value DATABASE_URL) ]] && files+=:$COMPOSE_DIR/external-db.yml
    # DOMAIN: HTTPS with certificates from an ACME directory (tls.yml, then acme.yml on top).
    [[ $(env_value TLS_ENABLED 0) == 1 || -n $(env_value DOMAIN) ]] && files+=:$COMPOSE_DIR/tls.yml
    [[ -n $(env_value DOMAIN) ]] && files+=:$COMPOSE_DIR/acme.yml
    [[ $(env_value REFERENCE 0) == 1 ]] && files+=:$COMPOSE_DIR/reference.yml
    [[ $(env_value DEV 0) == 1 ]] && files+=:$COMPOSE_DIR/dev.yml
    # Swarm's own keys, for swarm.sh's rendering only (never written to the env file).
    [[ ${SWARM:-0} == 1 && ${FILE_ONLY:-0} != 1 ]] && files+=:$COMPOSE_DIR/swarm.yml
    # Your own overrides: compose's conventional file, then COMPOSE_EXTRA_FILES (space-separated).
    [[ -f docker-compose.override.yml ]] && files+=:docker-compose.override.yml
    for extra in $(env_value COMPOSE_EXTRA_FILES); do files+=:$extra; done
    echo "$files"
}

compose_profiles() {  # the optional services the settings switch on, as COMPOSE_PROFILES
                      # (ALL_PROFILES=1: every one, so `down` finds every container)
    local profiles=()
    if [[ ${ALL_PROFILES:-0} == 1 && ${FILE_ONLY:-0} != 1 ]]; then echo monitoring,backup,baseline; return; fi
    [[ $(env_value MONITORING 0) == 1 ]] && profiles+=(monitoring)
    [[ $(env_value BACKUP_SCHEDULE 0) == 1 ]] && profiles+=(backup)
    baseline_on && profiles+=(baseline)
    local IFS=,
    echo "${profiles[*]}"
}

sync_compose_env() {  # write COMPOSE_FILE, COMPOSE_PROFILES, the project's name and the secret
                      # files (secrets/ for .env), from the env file's own
                      # settings (not the shell's), so plain `docker compose` in this folder
                      # starts the same stack as `make up`
    # SECRETS_ONLY=1 (Swarm's rendering, under another stack's name): the secret files only.
    [[ -f $ENV_FILE ]] || return 0
    local files profiles
    files=$(FILE_ONLY=1 compose_files)
    profiles=$(FILE_ONLY=1 compose_profiles)
    python3 - "$ENV_FILE" "$PROJECT" "$files" "$profiles" "${SECRETS_ONLY:-0}" <<'PY'
import os, sys
from urllib.parse import quote
path, project, files, profiles, secrets_only = sys.argv[1:]
with open(path, encoding="utf-8") as env:
    lines = env.read().splitlines()
settings = {}
for source in (".env.example", path):
    if os.path.exists(source):
        for line in open(source, encoding="utf-8"):
            if "=" in line and not line.startswith("#"):
                key, _, value = line.rstrip("\n").partition("=")
                if value or source == path:
                    settings[key.strip()] = value

# Secrets reach the containers as files (/run/secrets/<name>, named in <KEY>_FILE), so no
# value shows in `docker inspect`. Files 0644 in a 0700 directory: Compose bind-mounts them as
# they are, so the containers' own users must be able to read them; nobody else on this
# machine can reach them. One folder per env file (secrets/ for .env), as the values are its.
if os.path.normpath(path) == ".env":
    secrets_dir = "secrets"
else:
    secrets_dir = os.path.join(os.path.dirname(path), os.path.basename(path) + ".secrets")
bundled = "postgresql+psycopg2://{}:{}@postgres:5432/{}".format(
    quote(settings.get("POSTGRES_USER") or "app", safe=""),
    quote(settings.get("POSTGRES_PASSWORD", ""), safe=""),
    quote(settings.get("POSTGRES_DB") or "app", safe=""),
)
secrets = {
    "secret_key": settings.get("SECRET_KEY", ""),
    "jwt_secret_key": settings.get("JWT_SECRET_KEY", ""),
    "admin_password": settings.get("ADMIN_PASSWORD", ""),
    "postgres_password": settings.get("POSTGRES_PASSWORD", ""),
    "postgres_monitor_password": settings.get("POSTGRES_MONITOR_PASSWORD", ""),
    "database_url": settings.get("DATABASE_URL") or bundled,
}
os.makedirs(secrets_dir, mode=0o700, exist_ok=True)
os.chmod(secrets_dir, 0o700)
for name, value in secrets.items():
    target = os.path.join(secrets_dir, name)
    try:
        with open(target, encoding="utf-8") as current:
            if current.read() == value:
                continue
    except FileNotFoundError:
        pass
    # In place (not a rename): a running container's bind mount follows the same file.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(value)
    os.chmod(target, 0o644)

marker = "# --- Written by make from the settings above (edit those, then `make env`) ---"
shown = secrets_dir if os.path.isabs(secrets_dir) else f"./{secrets_dir}"
wanted = {
    "COMPOSE_PROJECT_NAME": project,
    "COMPOSE_FILE": files,
    "COMPOSE_PROFILES": profiles,
    "SECRETS_DIR": shown,
}
if secrets_only == "1":
    current = {l.split("=", 1)[0]: l.split("=", 1)[1] for l in lines if "=" in l}
    for key in ("COMPOSE_PROJECT_NAME", "COMPOSE_FILE", "COMPOSE_PROFILES"):
        if key in current:
            wanted[key] = current[key]
        else:
            del wanted[key]
kept = [l for l in lines if l != marker and l.split("=", 1)[0] not in wanted]
while kept and not kept[-1].strip():
    kept.pop()
new = kept + ["", marker] + [f"{k}={v}" for k, v in wanted.items()]
if new != lines:
    with open(path, "w", encoding="utf-8") as env:
        env.write("\n".join(new) + "\n")
PY
}

compose_cmd() {  # the compose command: the `docker compose` plugin, else docker-compose (1.29 or v2)
    if docker compose version >/dev/null 2>&1; then echo "docker compose"; else echo docker-compose; fi
}

compose_v2() { $(compose_cmd) version --short 2>/dev/null | grep -Eq '^v?2'; }

baseline_on() {  # BASELINE=1 (shell or env file): the devserver runs beside the stack
    [[ $(env_value BASELINE 0) == 1 ]]
}

ensure_app_env() {  # the app's settings file exists (empty, mode 600), as compose requires
    local app_env
    app_env=$(env_value APP_ENV_FILE app.env)
    if [[ -n $app_env && ! -e $app_env ]]; then
        (umask 077 && echo "# Your app's own settings (KEY=value), for its containers only." >"$app_env")
        echo "created $app_env for your app's own settings (chmod 600)" >&2
    fi
}

compose() {  # compose ARGS: compose on this project with the files and profiles the settings
             # (shell, then env file) ask for; COMPOSE_FILE/COMPOSE_PROFILES are read by both
             # compose versions (1.29 has no --profile on every subcommand)
    ensure_app_env
    # Swarm's rendering runs under the Swarm stack's name: the env file keeps the compose stack's.
    if [[ ${SWARM:-0} == 1 ]]; then SECRETS_ONLY=1 sync_compose_env; else sync_compose_env; fi
    # shellcheck disable=SC2046  # the command is words
    COMPOSE_FILE=$(compose_files) COMPOSE_PROFILES=$(compose_profiles) COMPOSE_PATH_SEPARATOR=: \
        $(compose_cmd) -p "$PROJECT" --env-file "$ENV_FILE" "$@"
}

env_value() {  # env_value NAME [DEFAULT]: the shell's value (unless FILE_ONLY=1), else the env
               # file's, else .env.example's, else DEFAULT
    local name=$1 default=${2:-} value="" file
    [[ ${FILE_ONLY:-0} == 1 ]] || value=${!name:-}
    for file in "$ENV_FILE" .env.example; do
        if [[ -z $value && -f $file ]]; then
            value=$(sed -n "s/^${name}=//p" "$file" | tail -n 1)
        fi
    done
    echo "${value:-$default}"
}

env_value_exact() {  # env_value_exact NAME: like env_value, but an empty value set in the shell
                    # or the env file counts (MIGRATE_COMMAND= means: no migration)
    local name=$1 file
    if [[ -n ${!name+set} ]]; then echo "${!name}"; return; fi
    for file in "$ENV_FILE" .env.example; do
        if [[ -f $file ]] && grep -q "^${name}=" "$file"; then
            sed -n "s/^${name}=//p" "$file" | tail -n 1
            return
        fi
    done
}

make_env() {  # create ENV_FILE from .env.example with fresh secrets, once; later, add the
              # generated secrets a newer .env.example asks for and ENV_FILE lacks
    python3 - "$ENV_FILE" <<'PY' || return 1
import os, secrets, sys
path = sys.argv[1]
generated = {"SECRET_KEY", "JWT_SECRET_KEY", "POSTGRES_PASSWORD", "ADMIN_PASSWORD",
             "POSTGRES_MONITOR_PASSWORD"}
def fresh(name):
    return f"{name}={secrets.token_urlsafe(48)}\n"
if os.path.exists(path):
    with open(path, encoding="utf-8") as env:
        have = {line.split("=", 1)[0].strip() for line in env}
    missing = sorted(generated - have)
    if missing:
        with open(path, "a", encoding="utf-8") as out:
            out.write("\n# Generated by `make env` for settings added to .env.example since.\n")
            out.writelines(fresh(name) for name in missing)
        print(f"added fresh {', '.join(missing)} to {path}")
    sys.exit(0)
# The host user's ids, for what the scheduled backup writes into backups/.
ids = {"BACKUP_UID": os.getuid(), "BACKUP_GID": os.getgid()}
lines = []
for line in open(".env.example", encoding="utf-8"):
    name = line.split("=", 1)[0]
    if name in generated and line.strip() == f"{name}=":
        line = fresh(name)
    elif name in ids and line.strip() == f"{name}=":
        line = f"{name}={ids[name]}\n"
    lines.append(line)
with open(path, "x", encoding="utf-8") as out:
    out.writelines(lines)
os.chmod(path, 0o600)
print(f"created {path} with fresh secrets (chmod 600)")
PY
    ensure_app_env
    sync_compose_env
}

container_state() {  # container_state ID: health status, or the run state when it has no healthcheck
    docker inspect -f '{{if eq .State.Status "exited"}}exited:{{.State.ExitCode}}{{else if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$1"
}

password_hint() {  # explain the one failure a fresh .env causes on an old data volume
    grep -q "password authentication failed" || return 0
    cat <<EOT

The database refused the password in $ENV_FILE. Postgres sets its password only when it
creates its data volume, so a volume made with an earlier $ENV_FILE keeps the earlier one.
Either restore that $ENV_FILE, or, if the data can go: make clean && make up
EOT
}

report_failed() {  # report_failed ID STATE: a failed container's last log lines, and the likely fix
    local logs
    echo "container $(docker inspect -f '{{.Name}}' "$1") failed ($2):" >&2
    logs=$(docker logs --tail 40 "$1" 2>&1)
    echo "$logs" >&2
    password_hint <<< "$logs" >&2
}

diagnose() {  # after a failed `up`: report every container of the project that exited non-zero
    local id state
    for id in $(compose ps -q); do
        state=$(container_state "$id")
        case $state in exited:0) ;; exited:*) report_failed "$id" "$state" ;; esac
    done
}

active_services() {  # the services `up` starts: 1.29's `config --services` ignores profiles
    local active
    active=,$(compose_profiles),
    compose config | awk -v active="$active" '
        /^services:/ { in_services = 1; next }
        /^[^ ]/ { in_services = 0 }
        !in_services { next }
        /^  [^ ]/ { sub(/:.*/, ""); sub(/^ +/, ""); service = $0; on[service] = 1; next }
        /^    scale: 0$/ { off[service] = 1; next }
        /^    profiles:/ { in_profiles = 1; on[service] = 0; next }
        in_profiles && /^ +- / { p = $0; sub(/^ +- /, "", p); if (index(active, "," p ",")) on[service] = 1; next }
        { in_profiles = 0 }
        END { for (s in on) if (on[s] && !off[s]) print s }'
}

wait_healthy() {  # wait until every container is healthy (or exited 0 for one-shots)
    local timeout=${1:-300} start=$SECONDS ids id state bad service services
    services=$(active_services)
    while true; do
        bad=""
        ids=$(compose ps -q)
        for id in $ids; do
            state=$(container_state "$id")
            case $state in
                healthy | running | exited:0) ;;
                exited:*) report_failed "$id" "$state"; return 1 ;;
                *) bad="$bad $(docker inspect -f '{{.Name}}' "$id")=$state" ;;
            esac
        done
        # A service whose container could not even be created has no id at all.
        for service in $services; do
            [[ -n $(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" \
                    --filter "label=com.docker.compose.service=$service") ]] || bad="$bad $service=missing"
        done
        if [[ -z $bad && -n $ids ]]; then
            echo "all services healthy after $((SECONDS - start)) s"
            return 0
        fi
        if (( SECONDS - start > timeout )); then
            echo "not healthy after ${timeout} s:$bad" >&2
            compose ps >&2
            return 1
        fi
        sleep 1
    done
}

devserver_running() {  # a devserver container of this project is up
    [[ -n $(docker ps -q --filter "label=com.docker.compose.project=$PROJECT" \
            --filter "label=com.docker.compose.service=devserver") ]]
}

baseline() {  # baseline up|down|running: the built-in-server baseline beside a running stack
    case ${1:-} in
        up)
            if [[ -z $(compose ps -q app) ]]; then
                echo "the stack is not running: start it first (make up)" >&2
                return 1
            fi
            # --no-deps: the stack is up, its migration done; only the devserver is added.
            BASELINE=1 compose up -d --no-deps devserver || { diagnose; return 1; }
            BASELINE=1 wait_healthy "${2:-120}"
            ;;
        down) BASELINE=1 compose rm -s -f devserver ;;
        running) devserver_running ;;
        *) echo "usage: stack.sh baseline up|down|running" >&2; return 2 ;;
    esac
}

compose_wait_flags() {  # `up --wait` where compose has it (v2), with a timeout where it has one
    local help
    compose_v2 || return 0
    help=$($(compose_cmd) up --help 2>/dev/null)
    grep -q -- '--wait ' <<< "$help" || return 0
    if grep -q -- '--wait-timeout' <<< "$help"; then
        echo "--wait --wait-timeout $1"
    else
        echo "--wait"
    fi
}

up_stack() {  # up REPLICAS: start (or update) the stack and return once every service is healthy
    local replicas=${1:-3} wait_flags
    if [[ $(env_value DEV 0) == 1 && $(env_value APP_ENV production) == production ]]; then
        echo "refused: the development overlay (deploy/compose/dev.yml) mounts the source and" \
            "restarts on changes; APP_ENV is production. Use make dev-stack, or set" \
            "APP_ENV=development." >&2
        return 2
    fi
    if baseline_on; then
        echo "with the built-in-server baseline (devserver), for comparing by hand"
    elif devserver_running; then
        echo "stopping the built-in-server baseline (devserver): BASELINE=1 keeps it"
        baseline down
    fi
    # Compose v2 waits itself (healthy, or exited 0 for the one-shots other services wait for);
    # 1.29 has no --wait, so the loop above does it.
    wait_flags=$(compose_wait_flags 300)
    # shellcheck disable=SC2086  # the flags are words
    compose up -d --remove-orphans --scale "app=$replicas" $wait_flags || { diagnose; return 1; }
    if [[ -z $wait_flags ]]; then
        wait_healthy 300
    else
        echo "all services healthy (docker compose up --wait)"
    fi
}

urls() {
    local bind port dev
    bind=$(env_value BIND_ADDR 127.0.0.1)
    port=$(env_value STACK_PORT 8080)
    dev=$(env_value DEVSERVER_PORT 5000)
    echo
    echo "  stack (nginx → $(compose ps -q app | wc -l) replicas of $(env_value APP_MODULE 'app:create_app()')):  http://$bind:$port/"
    if demo_app; then
        echo "    API description:                 http://$bind:$port/openapi.json"
    fi
    echo "    websocket events:                ws://$bind:$port/ws"
    if [[ -n $(env_value DOMAIN) ]]; then
        local domain tls
        domain=$(env_value DOMAIN)
        domain=${domain%%,*}
        tls=$(env_value TLS_PORT 8443)
        if [[ $tls == 443 ]]; then tls=""; else tls=:$tls; fi
        echo "    HTTPS (HTTP/2, ACME certificate): https://$domain$tls/  (progress: make logs S=acme)"
    elif [[ $(env_value TLS_ENABLED 0) == 1 ]]; then
        echo "    HTTPS (HTTP/2):                  https://$bind:$(env_value TLS_PORT 8443)/"
    fi
    if [[ $(env_value MONITORING 0) == 1 ]]; then
        echo "  Prometheus (targets, alerts):      http://$bind:$(env_value PROMETHEUS_PORT 9090)/"
    fi
    if devserver_running; then
        echo "  baseline (Flask built-in server):  http://$bind:$dev/"
    fi
    if demo_app; then
        echo "  admin user: $(env_value ADMIN_USERNAME admin), password in $ENV_FILE"
    fi
    echo
}

demo_app() {  # the stack serves the demo app (APP_SOURCE is this repository)
    [[ $(env_value APP_SOURCE .) == . && $(env_value APP_MODULE 'app:create_app()') == 'app:create_app()' ]]
}

migrate() {  # run the app's migration (MIGRATE_COMMAND) once, in a new container of the image
    local command
    command=$(env_value_exact MIGRATE_COMMAND)
    echo "running the migration: ${command:-none (MIGRATE_COMMAND is empty)}"
    compose run --rm migrate || { echo "the migration failed: no replica was replaced" >&2; return 1; }
}

rollout() {  # replace app replicas one at a time: start the new one, wait healthy, drain the old
    local old new_ids id count before
    old=$(compose ps -q app)
    count=$(echo "$old" | wc -w)
    echo "rolling out $count replicas, one at a time"
    for id in $old; do
        before=$(compose ps -q app | sort)
        compose up -d --no-deps --no-recreate --scale app=$((count + 1)) app >/dev/null 2>&1
        new_ids=$(comm -13 <(echo "$before") <(compose ps -q app | sort))
        for new in $new_ids; do
            until [[ $(container_state "$new") == healthy ]]; do
                if [[ $(container_state "$new") == unhealthy || $(container_state "$new") == exited:* ]]; then
                    echo "new replica $new did not become healthy; stopping the rollout" >&2
                    return 1
                fi
                sleep 0.5
            done
        done
        # nginx re-resolves `app` every 5 s: wait until it knows the new replica before the old
        # one leaves. The old one then drains (SIGTERM): it refuses new connections, finishes
        # what is in flight and closes keep-alive connections, so nginx loses no request.
        sleep 6
        docker stop -t 30 "$id" >/dev/null
        docker rm "$id" >/dev/null
        echo "  replaced $(echo "$id" | cut -c1-12) with $(echo "$new_ids" | cut -c1-12)"
    done
    # Every replica runs the new image now: share its static files (APP_STATIC_DIR) with nginx.
    local out
    out=$(compose run --rm --no-deps static 2>&1) || { echo "$out" >&2; return 1; }
    echo "  shared the new image's static files with nginx"
}

cmd=${1:?usage: stack.sh compose|services|profiles|env|get|get-exact|up|wait|baseline|diagnose|urls|migrate|rollout ...}
shift
case $cmd in
    compose) compose "$@" ;;
    services) active_services ;;
    profiles) compose_profiles ;;
    up) up_stack "$@" ;;
    baseline) baseline "$@" ;;
    env) make_env ;;
    get) env_value "$@" ;;
    get-exact) env_value_exact "$@" ;;
    wait) wait_healthy "$@" ;;
    diagnose) diagnose ;;
    urls) urls ;;
    migrate) migrate ;;
    rollout) rollout ;;
    *) echo "unknown command: $cmd" >&2; exit 2 ;;
esac
