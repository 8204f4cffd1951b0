#!/usr/bin/env bash
# Stack operations the Makefile calls: compose detection, env creation, health waits, rollout.
# Works with `docker compose` (v2) and `docker-compose` (1.29, which lacks `up --wait`).
set -euo pipefail

PROJECT=${PROJECT:-flaskstack}
ENV_FILE=${ENV_FILE:-.env}

compose_files() {  # the base file plus the overrides the env (file) asks for
    local files=(-f docker-compose.yml)
    [[ -z $(env_value DATABASE_URL) ]] && files+=(-f docker-compose.postgres.yml)
    [[ $(env_value TLS_ENABLED 0) == 1 ]] && files+=(-f docker-compose.tls.yml)
    [[ $(env_value REFERENCE 0) == 1 ]] && files+=(-f docker-compose.reference.yml)
    [[ $(env_value DEV 0) == 1 ]] && files+=(-f docker-compose.dev.yml)
    # Your own overrides: compose's conventional file, then COMPOSE_EXTRA_FILES (space-separated).
    [[ -f docker-compose.override.yml ]] && files+=(-f docker-compose.override.yml)
    local extra
    for extra in $(env_value COMPOSE_EXTRA_FILES); do files+=(-f "$extra"); done
    echo "${files[@]}"
}

compose_v2() { docker compose version >/dev/null 2>&1; }

baseline_on() {  # BASELINE=1 (shell or env file): the devserver runs beside the stack
    [[ $(env_value BASELINE 0) == 1 ]]
}

compose() {
    # The devserver is in the `baseline` profile: compose sees it only when the baseline is on.
    # COMPOSE_PROFILES, because both compose versions read it (1.29 has no `--profile` on
    # every subcommand); set for this command only.
    local profiles=${COMPOSE_PROFILES:-} cmd=(docker-compose)
    if baseline_on; then
        profiles=baseline${profiles:+,$profiles}
    fi
    compose_v2 && cmd=(docker compose)
    # shellcheck disable=SC2046  # word splitting of the -f list is intended
    COMPOSE_PROFILES=$profiles "${cmd[@]}" -p "$PROJECT" --env-file "$ENV_FILE" $(compose_files) "$@"
}

env_value() {  # env_value NAME [DEFAULT]: the shell's value, else the env file's, else
               # .env.example's, else DEFAULT
    local name=$1 default=${2:-} value file
    value=${!name:-}
    for file in "$ENV_FILE" .env.example; do
        if [[ -z $value && -f $file ]]; then
            value=$(sed -n "s/^${name}=//p" "$file" | tail -n 1)
        fi
    done
    echo "${value:-$default}"
}

make_env() {  # create ENV_FILE from .env.example with fresh secrets, once
    if [[ -f $ENV_FILE ]]; then
        return 0
    fi
    python3 - "$ENV_FILE" <<'PY'
import secrets, sys
generated = {"SECRET_KEY", "JWT_SECRET_KEY", "POSTGRES_PASSWORD", "ADMIN_PASSWORD"}
lines = []
for line in open(".env.example", encoding="utf-8"):
    name = line.split("=", 1)[0]
    if name in generated and line.strip() == f"{name}=":
        line = f"{name}={secrets.token_urlsafe(48)}\n"
    lines.append(line)
with open(sys.argv[1], "x", encoding="utf-8") as out:
    out.writelines(lines)
PY
    chmod 600 "$ENV_FILE"
    echo "created $ENV_FILE with fresh secrets (chmod 600)"
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
    local service
    for service in $(compose config --services); do
        [[ $service == devserver ]] && ! baseline_on && continue
        echo "$service"
    done
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
    help=$(docker compose up --help 2>/dev/null)
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
        echo "refused: the development override (docker-compose.dev.yml) mounts the source and" \
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
    echo "  stack (nginx → $(compose ps -q app | wc -l) app replicas):  http://$bind:$port/"
    echo "    API description:                 http://$bind:$port/openapi.json"
    echo "    websocket events:                ws://$bind:$port/ws"
    if [[ $(env_value TLS_ENABLED 0) == 1 ]]; then
        echo "    HTTPS (HTTP/2):                  https://$bind:$(env_value TLS_PORT 8443)/"
    fi
    if devserver_running; then
        echo "  baseline (Flask built-in server):  http://$bind:$dev/"
    fi
    echo "  admin user: $(env_value ADMIN_USERNAME admin), password in $ENV_FILE"
    echo
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

cmd=${1:?usage: stack.sh compose|env|get|up|wait|baseline|diagnose|urls|rollout ...}
shift
case $cmd in
    compose) compose "$@" ;;
    up) up_stack "$@" ;;
    baseline) baseline "$@" ;;
    env) make_env ;;
    get) env_value "$@" ;;
    wait) wait_healthy "$@" ;;
    diagnose) diagnose ;;
    urls) urls ;;
    rollout) rollout ;;
    *) echo "unknown command: $cmd" >&2; exit 2 ;;
esac
