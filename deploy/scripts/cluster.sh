#!/usr/bin/env bash
# A three-node Docker Swarm on this machine (`make cluster-up`, `make cluster-down`): three
# Docker engines in containers (DIND_IMAGE) and a registry (REGISTRY_IMAGE) on a private
# network, so `make swarm-up` can deploy to several real engines that pull the stack's images
# from a registry, as in production. It never touches this machine's own engine beyond running
# these containers: no swarm is joined or left here.
#
#   cluster.sh up        start the registry and the nodes, form one swarm of three managers
#                        (idempotent: a running cluster is left as it is)
#   cluster.sh down      remove the nodes, the registry, their volumes, network and state
#   cluster.sh status    the containers and the swarm's nodes
#   cluster.sh manager   print DOCKER_HOST for a node whose engine answers as a manager
#   cluster.sh env       print the state file (what swarm.sh reads)
#   cluster.sh stats     memory and CPU of the node and registry containers (docker stats)
#
# Settings (environment):
#   CLUSTER_NAME (flaskstack-cluster)   prefix of its containers, network and volumes
#   CLUSTER_NODES (3)                   managers: three keep a Raft quorum after losing one
#   CLUSTER_SUBNET_PREFIX (10.213.40)   the private network's /24; node i is .1i, the registry .2.
#                                       Static addresses: a restarted manager keeps its Raft address
#   CLUSTER_PORT (18180)                node i publishes the stack's port on 127.0.0.1:CLUSTER_PORT+i
#   CLUSTER_REGISTRY_PORT (18150)       the registry on 127.0.0.1, where this machine pushes
#   CLUSTER_STATE_DIR (build/cluster/NAME)  state file, the nodes' API sockets, shared uploads
#   DIND_IMAGE, REGISTRY_IMAGE          see deploy/images/build.sh (`build.sh cluster`)
#
# How the parts meet:
# - The nodes pull `registry:5000/<name>` (an insecure registry on the private network, named
#   in each engine's --insecure-registry). This machine pushes the same repository path to
#   127.0.0.1:CLUSTER_REGISTRY_PORT, which its engine treats as insecure (loopback): the same
#   path, so the same digest.
# - Each node's engine API is a unix socket in CLUSTER_STATE_DIR/nodeN/ (mode 0700 directory,
#   socket group = the group of this machine's /var/run/docker.sock): only who may use this
#   machine's Docker may use the cluster's. No TCP port is opened for it.
# - The kernel here has no IPVS, so Swarm's routing mesh and virtual IPs do not work: the stack
#   uses DNS round robin (endpoint_mode: dnsrr) and host-mode ports, one nginx per node.
# - CLUSTER_STATE_DIR/uploads is mounted into every node at /srv/flaskstack/uploads, and the
#   state file's SWARM_UPLOADS_* settings bind the stack's `uploads` volume to it: it stands
#   for an NFS export, which this kernel cannot serve to containers (docs/swarm.md).
# - The state file (`cluster.sh env`) also holds the other settings swarm.sh needs here: it
#   reads them over the shell's and the env file's.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NAME=${CLUSTER_NAME:-flaskstack-cluster}
NODES=${CLUSTER_NODES:-3}
PREFIX=${CLUSTER_SUBNET_PREFIX:-10.213.40}
PORT=${CLUSTER_PORT:-18180}
REGISTRY_PORT=${CLUSTER_REGISTRY_PORT:-18150}
STATE=$(realpath -m "${CLUSTER_STATE_DIR:-$ROOT/build/cluster/$NAME}")
# The names build.sh builds (environment, else .env, else its defaults).
DIND_IMAGE=$("$ROOT/deploy/images/build.sh" names-cluster | sed -n 's/^DIND_IMAGE=//p')
REGISTRY_IMAGE=$("$ROOT/deploy/images/build.sh" names-cluster | sed -n 's/^REGISTRY_IMAGE=//p')
LABEL=org.flaskstack.cluster
# Where a node mounts the shared uploads directory.
UPLOADS_MOUNT=/srv/flaskstack/uploads
APP_UID=10001 # deploy/tornado/Dockerfile's USER: the replicas write uploads as this user

die() { echo "cluster.sh: $*" >&2; exit 1; }
note() { echo "cluster.sh: $*"; }

node_name() { echo "$NAME-node$1"; }
node_ip() { echo "$PREFIX.$((10 + $1))"; }
node_sock() { echo "$STATE/node$1/docker.sock"; }
running() { [[ $(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null) == true ]]; }
# The node's own CLI, inside the node (works whatever this machine's CLI version is).
on_node() { local i=$1; shift; docker exec "$(node_name "$i")" docker "$@"; }

# The capabilities a Docker engine needs, without --privileged: this machine's bounding set
# lacks CAP_SYS_RESOURCE, so --privileged fails ("unable to apply caps"); every other
# capability, no seccomp or AppArmor filter, writable /proc and /sys paths (systempaths) and
# every device (cgroup rule) are what dockerd, containerd and runc use.
NODE_SECURITY=(--cap-add ALL --cap-drop SYS_RESOURCE
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined
    --security-opt systempaths=unconfined --device-cgroup-rule 'a *:* rwm')

start_registry() {
    local c=$NAME-registry
    if running "$c"; then return 0; fi
    docker rm -f "$c" >/dev/null 2>&1 || true
    docker run -d --name "$c" --hostname registry --label "$LABEL=$NAME" \
        --network "$NAME" --ip "$PREFIX.2" --network-alias registry \
        -p "127.0.0.1:$REGISTRY_PORT:5000" -v "$NAME-registry:/var/lib/registry" \
        --cap-drop ALL --security-opt no-new-privileges --read-only --tmpfs /tmp \
        --memory 256m "$REGISTRY_IMAGE" >/dev/null
}

start_node() {
    local i=$1 c group=()
    c=$(node_name "$i")
    if running "$c"; then return 0; fi
    if docker inspect "$c" >/dev/null 2>&1; then  # stopped (killed): its state is in its volume
        docker start "$c" >/dev/null
        return 0
    fi
    mkdir -p "$STATE/node$i"
    chmod 0700 "$STATE/node$i"
    [[ -S /var/run/docker.sock ]] && group=(--group "$(stat -c %g /var/run/docker.sock)")
    docker run -d --name "$c" --hostname "node$i" --label "$LABEL=$NAME" \
        --network "$NAME" --ip "$(node_ip "$i")" \
        "${NODE_SECURITY[@]}" --tmpfs /run --tmpfs /tmp \
        -v "$c:/var/lib/docker" -v "$STATE/node$i:/cluster" -v "$STATE/uploads:$UPLOADS_MOUNT" \
        -p "127.0.0.1:$((PORT + i)):8080" \
        "$DIND_IMAGE" -H unix:///var/run/docker.sock -H unix:///cluster/docker.sock "${group[@]}" \
        --insecure-registry registry:5000 --log-opt max-size=5m --log-opt max-file=2 >/dev/null
}

wait_engine() {  # wait_engine I: until the node's engine answers (60 s)
    local i=$1 start=$SECONDS
    until on_node "$i" info >/dev/null 2>&1; do
        if ((SECONDS - start > 60)); then
            docker logs --tail 30 "$(node_name "$i")" >&2 || true
            die "the engine in $(node_name "$i") does not answer after 60 s"
        fi
        sleep 0.5
    done
}

swarm_state() { on_node "$1" info --format '{{.Swarm.LocalNodeState}}'; }

form_swarm() {
    local i token
    if [[ $(swarm_state 1) != active ]]; then
        # Overlay subnets from a pool apart from the nodes' own network.
        on_node 1 swarm init --advertise-addr "$(node_ip 1)" --default-addr-pool 10.214.0.0/16 >/dev/null
    fi
    token=$(on_node 1 swarm join-token -q manager)
    for ((i = 2; i <= NODES; i++)); do
        if [[ $(swarm_state "$i") != active ]]; then
            on_node "$i" swarm join --token "$token" --advertise-addr "$(node_ip "$i")" "$(node_ip 1):2377" >/dev/null
        fi
    done
    # A zone label per node: app replicas spread over zones (placement preferences), as they
    # would over racks or availability zones.
    for ((i = 1; i <= NODES; i++)); do
        on_node 1 node update --label-add "flaskstack.zone=node$i" "node$i" >/dev/null
    done
}

write_state() {
    local i ports=()
    for ((i = 1; i <= NODES; i++)); do ports+=("$((PORT + i))"); done
    {
        echo "CLUSTER_NAME=$NAME"
        echo "CLUSTER_NODES=$NODES"
        echo "CLUSTER_PORTS=\"${ports[*]}\""
        echo "CLUSTER_PUSH_REGISTRY=127.0.0.1:$REGISTRY_PORT"
        echo "CLUSTER_PULL_REGISTRY=registry:5000"
        for ((i = 1; i <= NODES; i++)); do echo "CLUSTER_NODE${i}_HOST=unix://$(node_sock "$i")"; done
        # swarm.sh's settings for this cluster. nginx publishes 8080 on each node, which the
        # node container publishes on 127.0.0.1 (host mode: no routing mesh without IPVS).
        echo "SWARM_PORT=8080"
        echo "SWARM_PUBLISH_MODE=host"
        # The nodes pull from the registry, by digest, so a pushed rebuild rolls out.
        echo "SWARM_RESOLVE_IMAGE=always"
        # The `uploads` volume binds the directory every node mounts.
        echo "SWARM_UPLOADS_TYPE=none"
        echo "SWARM_UPLOADS_OPTIONS=bind"
        echo "SWARM_UPLOADS_DEVICE=$UPLOADS_MOUNT"
    } >"$STATE/cluster.env"
}

up() {
    local start=$SECONDS i sock
    for image in "$DIND_IMAGE" "$REGISTRY_IMAGE"; do
        docker image inspect "$image" >/dev/null 2>&1 || die "image $image is missing: deploy/images/build.sh cluster"
    done
    sock=$(node_sock "$NODES")
    ((${#sock} < 100)) || die "the socket path $sock is too long for a unix socket: set CLUSTER_STATE_DIR"
    mkdir -p "$STATE/uploads"
    chmod 0700 "$STATE"
    if ! docker network inspect "$NAME" >/dev/null 2>&1; then
        docker network create --label "$LABEL=$NAME" --subnet "$PREFIX.0/24" "$NAME" >/dev/null ||
            die "cannot create network $NAME on $PREFIX.0/24 (in use? set CLUSTER_SUBNET_PREFIX)"
    fi
    start_registry
    for ((i = 1; i <= NODES; i++)); do start_node "$i"; done
    for ((i = 1; i <= NODES; i++)); do wait_engine "$i"; done
    note "$NODES engines answer after $((SECONDS - start)) s"
    form_swarm
    # The replicas write uploads as APP_UID, nginx (uid 101) reads them.
    docker exec "$(node_name 1)" sh -c "chown $APP_UID:$APP_UID $UPLOADS_MOUNT && chmod 0755 $UPLOADS_MOUNT"
    write_state
    note "swarm of $NODES managers up after $((SECONDS - start)) s"
    status
    cat <<TXT

  Deploy the stack to it: make swarm-up (it finds this cluster through $STATE/cluster.env)
  The stack's port, one per node: $(for ((i = 1; i <= NODES; i++)); do printf 'http://127.0.0.1:%s/ ' $((PORT + i)); done)
  The registry, for pushes from here: 127.0.0.1:$REGISTRY_PORT
  The swarm's CLI: DOCKER_HOST=\$(deploy/scripts/cluster.sh manager) docker node ls

TXT
}

down() {
    local ids vols
    ids=$(docker ps -aq --filter "label=$LABEL=$NAME")
    if [[ -n $ids ]]; then
        # Files the replicas wrote belong to APP_UID: remove them from inside while a node runs.
        if running "$(node_name 1)"; then
            docker exec "$(node_name 1)" sh -c "rm -rf $UPLOADS_MOUNT/* $UPLOADS_MOUNT/.[!.]*" || true
        fi
        # shellcheck disable=SC2086  # one id per word
        docker rm -f -v $ids >/dev/null
        note "removed $(wc -w <<<"$ids") containers"
    fi
    vols=$(docker volume ls -q | grep -E "^$NAME-(registry|node[0-9]+)$" || true)
    if [[ -n $vols ]]; then
        # shellcheck disable=SC2086
        docker volume rm $vols >/dev/null
        note "removed volumes: $(tr '\n' ' ' <<<"$vols")"
    fi
    if docker network inspect "$NAME" >/dev/null 2>&1; then
        docker network rm "$NAME" >/dev/null
    fi
    rm -rf "$STATE"
    note "cluster $NAME is gone"
}

manager() {  # DOCKER_HOST of the first node whose engine answers as a reachable manager
    local i host
    for ((i = 1; i <= NODES; i++)); do
        host=unix://$(node_sock "$i")
        running "$(node_name "$i")" || continue
        if [[ $(DOCKER_HOST=$host timeout 10 docker info --format '{{.Swarm.ControlAvailable}}' 2>/dev/null) == true ]]; then
            echo "$host"
            return 0
        fi
    done
    die "no manager of cluster $NAME answers (make cluster-up)"
}

status() {
    docker ps -a --filter "label=$LABEL=$NAME" --format 'table {{.Names}}\t{{.Status}}\t{{.Ports}}'
    echo
    DOCKER_HOST=$(manager) docker node ls
}

stats() {
    # shellcheck disable=SC2046  # one name per word
    docker stats --no-stream --format 'table {{.Name}}\t{{.MemUsage}}\t{{.CPUPerc}}' \
        $(docker ps -q --filter "label=$LABEL=$NAME")
}

cmd=${1:?usage: cluster.sh up|down|status|manager|env|stats}
case $cmd in
    up) up ;;
    down) down ;;
    status) status ;;
    manager) manager ;;
    env) cat "$STATE/cluster.env" ;;
    stats) stats ;;
    *) echo "unknown command: $cmd (up|down|status|manager|env|stats)" >&2; exit 2 ;;
esac
