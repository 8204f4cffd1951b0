#!/usr/bin/env bash
# The stack on Docker Swarm (`make swarm-up`, `make swarm-down`): the compose files and profiles
# `make` uses, plus deploy/compose/swarm.yml, rendered with the same env file, translated for
# Swarm by swarm_render.py and deployed as a stack.
#
# Where: the three-node cluster `make cluster-up` started (deploy/scripts/cluster.sh), when its
# state file exists; otherwise this machine's engine. On the cluster, swarm.sh talks to a
# manager through its socket and pushes the images to the cluster's registry (the nodes pull them
# from there); the cluster's state file gives the settings that differ there (SWARM_PORT,
# SWARM_PUBLISH_MODE, SWARM_RESOLVE_IMAGE, SWARM_UPLOADS_*).
#
#   swarm.sh up             join nothing, init a single-node swarm if this node is in none,
#                           deploy (or update) Postgres and the migration, wait until the
#                           migration completed, then the rest: wait until all is healthy
#   swarm.sh down [-v]      remove the stack (-v: and its volumes), wait until it is gone, and
#                           leave the swarm if `up` created it and nothing else runs in it
#   swarm.sh status         the stack's services and tasks
#   swarm.sh render         print the file `up` deploys (it contains the env file's secrets)
#
# Settings (shell, else the env file, else .env.example, else the default):
#   SWARM_STACK (flaskstack-swarm)  stack name; its networks and volumes are prefixed with it
#                                   (not the compose project's name: `flaskstack_edge` exists)
#   SWARM_PORT (STACK_PORT, 8080)   nginx's published port, on every interface: Swarm cannot
#                                   bind a port to one address, so BIND_ADDR does not apply
#   SWARM_PUBLISH_MODE (host)       host: the port on nginx's node, real client addresses;
#                                   ingress: the routing mesh, every node, the mesh's address
#   SWARM_ADVERTISE_ADDR (127.0.0.1)  for the swarm this script creates: a loopback address is
#                                   a single-node swarm; for several machines `docker swarm init`
#                                   yourself with the node's address and join the others first
#   SWARM_RESOLVE_IMAGE (never)     `docker stack deploy --resolve-image`: never uses the local
#                                   images; always/changed for images in a registry
#   SWARM_UPLOADS_TYPE, _DEVICE,    the `uploads` volume's local-driver options (mount -t TYPE
#   _OPTIONS (empty)                -o OPTIONS DEVICE on each node), so every node sees the same
#                                   files: nfs, or none/bind with a directory every node mounts
#   SWARM_TIMEOUT (300)             seconds `up` waits for the services, `down` for removal
#   SWARM_STATE_DIR (build/swarm)   where `up` remembers that it created the swarm, and the
#                                   secrets' files (mode 0600) the CLI reads when deploying
#   SWARM_CLUSTER (auto)            auto: the cluster if build/cluster/CLUSTER_NAME/cluster.env
#                                   exists (CLUSTER_NAME: flaskstack-cluster), else this engine;
#                                   1: the cluster or fail; 0: this engine
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SCRIPTS=$ROOT/deploy/scripts  # stack.sh, and swarm_*.py: the Python this script runs
STACK_SH=$SCRIPTS/stack.sh
# Paths given relative to the caller's directory stay valid after the cd below.
ENV_FILE=$(realpath -m "${ENV_FILE:-.env}")
export ENV_FILE
STATE_DIR=$(realpath -m "${SWARM_STATE_DIR:-$ROOT/build/swarm}")
cd "$ROOT"

get() { "$STACK_SH" get "$@"; }  # the shell's value, else the env file's, else .env.example's

STACK=$(get SWARM_STACK flaskstack-swarm)
TIMEOUT=$(get SWARM_TIMEOUT 300)
MARKER=$STATE_DIR/$STACK.swarm-init
LABEL=com.docker.stack.namespace=$STACK
PG_LABEL=flaskstack.postgres

die() { echo "swarm.sh: $*" >&2; exit 1; }
note() { echo "swarm.sh: $*"; }

# The cluster, if there is one to use: its state file gives the nodes' ports and sockets and the
# registry's two names (cluster.sh writes it).
CLUSTER_NAME=${CLUSTER_NAME:-flaskstack-cluster}
CLUSTER_STATE_DIR=$(realpath -m "${CLUSTER_STATE_DIR:-$ROOT/build/cluster/$CLUSTER_NAME}")
export CLUSTER_NAME CLUSTER_STATE_DIR
CLUSTER=0
case ${SWARM_CLUSTER:-auto} in
    0) ;;
    auto) [[ -f $CLUSTER_STATE_DIR/cluster.env ]] && CLUSTER=1 ;;
    *) [[ -f $CLUSTER_STATE_DIR/cluster.env ]] || die "no cluster $CLUSTER_NAME: make cluster-up"
       CLUSTER=1 ;;
esac
if ((CLUSTER)); then
    # Its nodes, registry and the SWARM_* settings it needs, over the shell's and the env file's.
    set -a
    # shellcheck source=/dev/null  # written by cluster.sh
    source "$CLUSTER_STATE_DIR/cluster.env"
    set +a
    HOST_DOCKER_HOST=${DOCKER_HOST:-}
    DOCKER_HOST=$("$SCRIPTS/cluster.sh" manager) || die "no manager of cluster $CLUSTER_NAME answers"
    export DOCKER_HOST
fi
host_docker() {  # this machine's engine, whichever engine the rest of the script talks to
    if ((CLUSTER)); then DOCKER_HOST=$HOST_DOCKER_HOST command docker "$@"; else docker "$@"; fi
}

swarm_state() { docker info --format '{{.Swarm.LocalNodeState}}'; }
cluster_id() { docker info --format '{{if .Swarm.Cluster}}{{.Swarm.Cluster.ID}}{{end}}'; }

python_with_yaml() {  # an interpreter that has PyYAML (docker-compose 1.x brings it)
    local py
    for py in "${PYTHON:-python3}" "$ROOT/.venv/bin/python" /usr/bin/python3; do
        if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import yaml' 2>/dev/null; then
            echo "$py"
            return 0
        fi
    done
    die "rendering needs Python with PyYAML (apt-get install python3-yaml, or make venv)"
}

# The profiles `make` switches on (MONITORING, BACKUP_SCHEDULE, BASELINE): stack.sh's own rule.
compose_profiles() {
    "$STACK_SH" profiles
}

render() {  # the deployable stack file on stdout; swarm_render.py's docstring lists what it
            # translates, and reports on stderr what is lost without a replacement
    local py profiles
    py=$(python_with_yaml)
    SWARM_PORT=$(get SWARM_PORT "$(get STACK_PORT 8080)")
    SWARM_PUBLISH_MODE=$(get SWARM_PUBLISH_MODE host)
    SWARM_RESOLVE_IMAGE=$(get SWARM_RESOLVE_IMAGE never)
    SWARM_SECRETS_DIR=$STATE_DIR/secrets/$STACK SWARM_STACK=$STACK
    SWARM_PROMETHEUS_PORT=$(get SWARM_PROMETHEUS_PORT)
    SWARM_UPLOADS_TYPE=$(get SWARM_UPLOADS_TYPE)
    SWARM_UPLOADS_DEVICE=$(get SWARM_UPLOADS_DEVICE)
    SWARM_UPLOADS_OPTIONS=$(get SWARM_UPLOADS_OPTIONS)
    export SWARM_PORT SWARM_PUBLISH_MODE SWARM_RESOLVE_IMAGE SWARM_SECRETS_DIR SWARM_STACK
    export SWARM_PROMETHEUS_PORT SWARM_UPLOADS_TYPE SWARM_UPLOADS_DEVICE SWARM_UPLOADS_OPTIONS
    profiles=$(compose_profiles)
    # SWARM=1: stack.sh adds deploy/compose/swarm.yml. The stack's name as the project makes
    # compose v2's explicit network and volume names match those `docker stack deploy` gives.
    SWARM=1 PROJECT=$STACK "$STACK_SH" compose config |
        COMPOSE_PROFILES=$profiles "$py" "$SCRIPTS/swarm_render.py"
}

stack_exists() { [[ -n $(docker service ls -q --filter "label=$LABEL" 2>/dev/null) ]]; }

warn_running_containers() {  # swarm init/leave re-creates Docker's networking
    local running
    running=$(docker ps -q | wc -l)
    if ((running > 0)); then
        note "warning: $running containers run here; joining or leaving a swarm has cut running" \
            "containers' networks on Docker 20.10 (make test-swarm runs alone for this reason)"
    fi
}

ensure_swarm() {  # init a single-node swarm unless this node is already in one; remember it
    local state
    state=$(swarm_state)
    case $state in
        active)
            [[ $(docker info --format '{{.Swarm.ControlAvailable}}') == true ]] ||
                die "this node is a swarm worker: run this on a manager"
            ;;
        inactive)
            local addr gwbridge=0
            addr=$(get SWARM_ADVERTISE_ADDR 127.0.0.1)
            docker network inspect docker_gwbridge >/dev/null 2>&1 && gwbridge=1
            note "this node is in no swarm: creating a single-node swarm (advertised on $addr)"
            warn_running_containers
            docker swarm init --advertise-addr "$addr" >/dev/null
            mkdir -p "$STATE_DIR"
            # The swarm's id, and whether docker_gwbridge was there before it.
            printf '%s %s\n' "$(cluster_id)" "$gwbridge" >"$MARKER"
            ;;
        *) die "this node's swarm state is '$state'; fix it (docker info) and retry" ;;
    esac
}

label_postgres_node() {  # Postgres's data is local to one node: pin it (deploy/compose/swarm.yml)
    [[ -n $(get DATABASE_URL) ]] && return 0  # your own database: no bundled Postgres
    local node
    for node in $(docker node ls -q); do
        if [[ $(docker node inspect -f "{{index .Spec.Labels \"$PG_LABEL\"}}" "$node") == true ]]; then
            return 0
        fi
    done
    docker node update --label-add "$PG_LABEL=true" "$(docker info --format '{{.Swarm.NodeID}}')" >/dev/null
    note "labelled this node $PG_LABEL=true: the bundled Postgres and its data live here"
}

check_port_free() {  # fail early rather than watch nginx's task be rejected
    local port=$1
    stack_exists && return 0  # a redeploy: the stack's own nginx holds the port
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is in use on this machine (a compose stack? \`make down\`, or set SWARM_PORT)"
    fi
}

service_names() { docker service ls --filter "label=$LABEL" --format '{{.Name}}' | sort; }

# One line per unfinished service ("name: why"), nothing when the stack is up; a line FATAL
# when waiting cannot help. A one-shot (restart_policy on-failure) is done when its newest
# task completed; any other service when its update (if any) completed
# and exactly the wanted replicas run, all of the current spec (Swarm counts a task with a
# healthcheck as running only once it is healthy). $1: when this deploy started (UTC).
pending() {
    local ids tasks
    ids=$(docker service ls -q --filter "label=$LABEL")
    [[ -n $ids ]] || return 0
    # shellcheck disable=SC2086  # one id per word
    tasks=$(docker service ps -q --no-trunc $ids | sort -u)
    {
        # shellcheck disable=SC2086
        docker service inspect $ids
        echo
        # shellcheck disable=SC2086
        if [[ -n $tasks ]]; then docker inspect $tasks; else echo '[]'; fi
        echo
        # shellcheck disable=SC2046  # one id per word
        docker node inspect $(docker node ls -q)
    } | python3 "$SCRIPTS/swarm_status.py" "$1" | { grep -E "${2:-.}" || true; }
}

wait_up() {  # wait_up SINCE [PATTERN]: until pending reports nothing (matching PATTERN)
    local start=$SECONDS last=-10 out
    while true; do
        out=$(pending "$1" "${2:-}")
        if [[ -z $out && -n $(service_names) ]]; then
            note "${3:-all services} up after $((SECONDS - start)) s"
            return 0
        fi
        if grep -q '^FATAL$' <<<"$out" || { [[ -n ${2:-} ]] && pending "$1" '^FATAL$' | grep -q .; }; then
            grep -v '^FATAL$' <<<"$out" >&2
            die "the update failed; see \`docker service ps --no-trunc <service>\`"
        fi
        if ((SECONDS - start > TIMEOUT)); then
            echo "$out" >&2
            docker stack ps --no-trunc "$STACK" >&2 || true
            for svc in $(service_names); do
                echo "--- $svc (last log lines)" >&2
                docker service logs --tail 15 --no-task-ids "$svc" >&2 2>&1 || true
            done
            die "not up after $TIMEOUT s"
        fi
        if ((SECONDS - last >= 10)); then
            note "waiting: $(tr '\n' ';' <<<"$out" | sed 's/;$//; s/;/; /g')"
            last=$SECONDS
        fi
        sleep 1
    done
}

wait_nginx() {  # healthy tasks are in Swarm's DNS; nginx re-resolves `app` within 5 s
    local port=$1 start=$SECONDS
    if ((CLUSTER)); then
        wait_nginx_cluster
        return
    fi
    if [[ $(get SWARM_PUBLISH_MODE host) == host &&
        -z $(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_nginx") ]]; then
        note "nginx runs on another node: not checked from here"
        return 0
    fi
    until python3 "$SCRIPTS/swarm_probe.py" "http://127.0.0.1:$port/healthz" 2>/dev/null; do
        if ((SECONDS - start > 30)); then
            [[ $(get SWARM_PUBLISH_MODE host) == ingress ]] &&
                echo "swarm.sh: the routing mesh needs IPVS (the ip_vs kernel module); without it use SWARM_PUBLISH_MODE=host" >&2
            die "nginx does not answer on 127.0.0.1:$port after 30 s (docker service logs ${STACK}_nginx)"
        fi
        sleep 1
    done
}

node_running() {  # node_running I: whether the cluster's node container I runs
    [[ $(host_docker inspect -f '{{.State.Running}}' "$CLUSTER_NAME-node$1" 2>/dev/null) == true ]]
}

wait_nginx_cluster() {  # every running node's nginx answers through its port on 127.0.0.1
    local start=$SECONDS i=0 port
    for port in $CLUSTER_PORTS; do
        i=$((i + 1))
        node_running "$i" || { note "node$i is not running: 127.0.0.1:$port not checked"; continue; }
        until python3 "$SCRIPTS/swarm_probe.py" "http://127.0.0.1:$port/healthz" 2>/dev/null; do
            ((SECONDS - start > 60)) && die "nginx on node$i does not answer on 127.0.0.1:$port after 60 s"
            sleep 1
        done
    done
}

# The images the stack runs, pushed to the cluster's registry from this machine's engine
# (127.0.0.1:PORT/path) and named as the nodes pull them (registry:5000/path): the same
# repository path, so the same digest. Nothing is copied into a node by hand.
push_images() {
    local var default image path start=$SECONDS pids=() refs=() i images
    images=(APP_IMAGE:flaskstack/app:local NGINX_STACK_IMAGE:flaskstack/nginx:local POSTGRES_IMAGE:postgres:17-trixie)
    if [[ $(get MONITORING 0) == 1 ]]; then
        images+=(PROMETHEUS_IMAGE:prom/prometheus:v2.53.3 NGINX_EXPORTER_IMAGE:nginx/nginx-prometheus-exporter:1.4.1
            POSTGRES_EXPORTER_IMAGE:quay.io/prometheuscommunity/postgres-exporter:v0.17.1)
    fi
    for var in "${images[@]}"; do
        default=${var#*:} var=${var%%:*}
        [[ $var == POSTGRES_*IMAGE && -n $(get DATABASE_URL) ]] && continue
        image=$(get "$var" "$default")
        host_docker image inspect "$image" >/dev/null 2>&1 || die "image $image ($var) is not on this machine: make images"
        path=$image
        # A name that already has a registry host (a dot, a port or localhost before the first /).
        [[ $path == */* && ${path%%/*} =~ [.:]|^localhost$ ]] && path=${path#*/}
        host_docker tag "$image" "$CLUSTER_PUSH_REGISTRY/$path"
        # Side by side: a first push compresses every layer, which is most of its time.
        host_docker push -q "$CLUSTER_PUSH_REGISTRY/$path" >/dev/null &
        pids+=($!) refs+=("$CLUSTER_PUSH_REGISTRY/$path")
        export "$var=$CLUSTER_PULL_REGISTRY/$path"
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || die "pushing ${refs[$i]} to the cluster's registry failed"
        host_docker rmi "${refs[$i]}" >/dev/null  # the tag only
    done
    note "images pushed to the cluster's registry in $((SECONDS - start)) s"
}

# Every node pulls the app and nginx images while Postgres and the migration start, rather
# than each after the other once the rest is deployed (Swarm pulls when a task lands).
PREPULL_PIDS=()
prepull() {
    local host image
    for host in $(node_hosts); do
        for image in "$APP_IMAGE" "$NGINX_STACK_IMAGE"; do
            DOCKER_HOST=$host docker pull -q "$image" >/dev/null 2>&1 &
            PREPULL_PIDS+=($!)
        done
    done
}

deploy() {  # deploy FILE_TEXT [--prune]
    docker stack deploy --detach=true ${2:+"$2"} --resolve-image "$(get SWARM_RESOLVE_IMAGE never)" \
        -c - "$STACK" <<<"$1" | sed 's/^/  /'
}

up() {
    command -v docker >/dev/null || die "docker not found"
    docker stack --help >/dev/null 2>&1 || die "this docker CLI has no \`docker stack\`"
    "$STACK_SH" env
    local port rendered first since py
    port=$(get SWARM_PORT "$(get STACK_PORT 8080)")
    ((CLUSTER)) && push_images
    # Render first: a broken env file fails here, before a swarm is created.
    rendered=$(render) || die "rendering the compose files failed"
    py=$(python_with_yaml)
    first=$("$py" "$SCRIPTS/swarm_render.py" --only postgres,migrate,monitor-role <<<"$rendered")
    ((CLUSTER)) || check_port_free "$port"
    ensure_swarm
    label_postgres_node
    # A one-shot's completed task leaves its slot empty, so an update would not run it again:
    # remove it and let the deploy create it afresh, so migrations run on every `up` as with
    # Compose. (Replicas of a new image may start before they finish: keep migrations
    # compatible with the code still running, as for any rolling update.)
    local svc
    for svc in $(service_names); do
        if [[ $(docker service inspect -f '{{with .Spec.TaskTemplate.RestartPolicy}}{{.Condition}}{{end}}' "$svc") == on-failure ]]; then
            docker service rm "$svc" >/dev/null
        fi
    done
    # First Postgres and the migration only (the other services, if deployed, stay as they
    # are): replicas of a new image start once the schema is migrated.
    note "deploying stack $STACK: postgres and migrate first"
    since=$(date -u +%Y-%m-%dT%H:%M:%S)
    ((CLUSTER)) && prepull
    deploy "$first"
    wait_up "$since" "^${STACK}_(postgres|migrate|monitor-role):" "the migration"
    # A failed pull here is Swarm's to report (and retry) when it places a task.
    for pid in "${PREPULL_PIDS[@]}"; do wait "$pid" || true; done
    note "deploying stack $STACK"
    deploy "$rendered" --prune
    wait_up "$since"
    wait_nginx "$port"
    remove_old_secrets "$rendered"
    if ((CLUSTER)); then
        cat <<TXT

  stack $STACK on cluster $CLUSTER_NAME ($(docker node ls -q | wc -l) nodes, $(docker service inspect -f '{{.Spec.Mode.Replicated.Replicas}}' "${STACK}_app") app replicas, nginx on every node):
  $(for p in $CLUSTER_PORTS; do printf 'http://127.0.0.1:%s/ ' "$p"; done)
  admin user: $(get ADMIN_USERNAME admin), password in $ENV_FILE
  tasks: deploy/scripts/swarm.sh status    nodes: DOCKER_HOST=\$(deploy/scripts/cluster.sh manager) docker node ls

TXT
        return 0
    fi
    cat <<TXT

  stack $STACK on Swarm (nginx → $(docker service inspect -f '{{.Spec.Mode.Replicated.Replicas}}' "${STACK}_app") app replicas): http://127.0.0.1:$port/
  The port is open on every interface of nginx's node, not only 127.0.0.1.
  admin user: $(get ADMIN_USERNAME admin), password in $ENV_FILE
  tasks: deploy/scripts/swarm.sh status    logs: docker service logs ${STACK}_app

TXT
}

node_hosts() {  # DOCKER_HOST of every engine that holds the stack's containers and volumes
    local i=0 port var
    if ((CLUSTER == 0)); then
        echo "${DOCKER_HOST:-unix:///var/run/docker.sock}"
        return
    fi
    for port in $CLUSTER_PORTS; do
        i=$((i + 1))
        var=CLUSTER_NODE${i}_HOST
        node_running "$i" && echo "${!var}"
    done
    : "$port"
}

each_node() {  # each_node CMD...: run CMD against every engine of node_hosts
    local host
    for host in $(node_hosts); do DOCKER_HOST=$host "$@"; done
}

remove_old_secrets() {  # a changed value is a new secret (or config): remove the stack's
                        # unused old ones
    local name kind
    for kind in secret config; do
        for name in $(docker "$kind" ls --filter "label=$LABEL" --format '{{.Name}}'); do
            grep -qF "name: $name" <<<"$1" || docker "$kind" rm "$name" >/dev/null 2>&1 || true
        done
    done
}

down() {
    local volumes=0 start=$SECONDS left
    [[ ${1:-} == -v || ${1:-} == --volumes ]] && volumes=1
    if [[ $(swarm_state) == active ]]; then
        if stack_exists; then
            note "removing stack $STACK"
            docker stack rm "$STACK" >/dev/null
        elif [[ -z $(docker ps -aq --filter "label=$LABEL") ]]; then
            note "no stack $STACK"
        fi
        # Tasks drain (app replicas within their 30 s grace), then networks go.
        while true; do
            left=$(each_node docker ps -aq --filter "label=$LABEL" | wc -l)
            left=$((left + $(docker network ls -q --filter "label=$LABEL" | wc -l)))
            ((left == 0)) && break
            if ((SECONDS - start > TIMEOUT)); then
                die "stack $STACK still has $left containers or networks after $TIMEOUT s"
            fi
            sleep 1
        done
        ((SECONDS - start == 0)) || note "stack $STACK gone after $((SECONDS - start)) s"
    else
        note "this node is in no swarm: no stack $STACK to remove"
    fi
    if ((volumes)); then
        # Swarm keeps named volumes: removed only on request (they hold the database).
        local vols host
        for host in $(node_hosts); do
            vols=$(DOCKER_HOST=$host docker volume ls -q --filter "label=$LABEL")
            if [[ -n $vols ]]; then
                # shellcheck disable=SC2086  # one id per word
                DOCKER_HOST=$host docker volume rm $vols >/dev/null
                note "removed volumes: $(tr '\n' ' ' <<<"$vols")"
            fi
        done
    fi
    leave_if_ours
}

leave_if_ours() {  # leave the swarm only if `up` created it and nothing else runs in it
    [[ -f $MARKER ]] || return 0
    local id gwbridge
    read -r id gwbridge <"$MARKER"
    if [[ $(swarm_state) != active || $(cluster_id) != "$id" ]]; then
        rm -f "$MARKER"  # that swarm is gone already
        return 0
    fi
    if [[ -n $(docker service ls -q) ]]; then
        note "not leaving the swarm $STACK created: other services run in it ($(docker stack ls --format '{{.Name}}' | tr '\n' ' '))"
        return 0
    fi
    warn_running_containers
    docker swarm leave --force >/dev/null
    rm -f "$MARKER"
    # The bridge Swarm created for its containers' way out, if it was not there before.
    if [[ $gwbridge == 0 ]]; then
        docker network rm docker_gwbridge >/dev/null 2>&1 || true
    fi
    note "left the single-node swarm created by \`swarm.sh up\`"
}

status() {
    [[ $(swarm_state) == active ]] || die "this node is in no swarm"
    docker stack services "$STACK"
    echo
    docker stack ps --filter desired-state=running "$STACK"
    local out line
    out=$(pending 0000)
    echo
    if [[ -z $out ]]; then
        echo "all services up"
    else
        echo "not ready:"
        while IFS= read -r line; do echo "  $line"; done <<<"$out"
    fi
}

cmd=${1:?usage: swarm.sh up|down [-v]|status|render}
shift
case $cmd in
    up) up ;;
    down) down "$@" ;;
    status) status ;;
    render) render ;;
    *) echo "unknown command: $cmd (up|down [-v]|status|render)" >&2; exit 2 ;;
esac
