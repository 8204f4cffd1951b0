#!/bin/sh
# A Docker engine inside a container that is not --privileged (deploy/scripts/cluster.sh runs it
# with a listed capability set, see there). Docker mounts /sys and the cgroup tree read-only in
# an unprivileged container; dockerd needs both writable to create its own containers' cgroups
# and network devices, so remount them, then hand over to dockerd (PID 1, gets SIGTERM).
set -eu

mount -o remount,rw /sys 2>/dev/null || true
# cgroup v2 (one unified mount) or v1 (one bind mount per controller): remount each
# read-write; a bind mount changes its flags only with `remount,bind`.
awk '$3 ~ /^cgroup2?$/ {print $2}' /proc/self/mounts | while read -r m; do
	mount -o remount,rw "$m" 2>/dev/null || mount -o remount,bind,rw "$m" 2>/dev/null || true
done
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
	# cgroup v2: processes may not sit in a cgroup whose controllers are delegated to children.
	# Move everything already running (this shell) into a leaf, then enable the controllers.
	mkdir -p /sys/fs/cgroup/init
	xargs -rn1 </sys/fs/cgroup/cgroup.procs >/sys/fs/cgroup/init/cgroup.procs 2>/dev/null || true
	sed -e 's/ / +/g' -e 's/^/+/' </sys/fs/cgroup/cgroup.controllers \
		>/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
fi
# A stale pid file from a killed run would stop dockerd (the volume keeps /var/lib/docker, /run is tmpfs).
rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid 2>/dev/null || true

exec dockerd "$@"
