#!/usr/bin/env bash
# Make the images the stack needs exist on this Docker host, with or without a registry.
#
#   build.sh base     PYTHON_IMAGE, NGINX_IMAGE, POSTGRES_IMAGE: reuse what is there, else pull
#                     the official tag, else build a stand-in from Debian packages (debootstrap
#                     + docker import) that honours the parts of the official image the stack uses.
#   build.sh wheels   build/wheelhouse/ from the host's lock (deploy/tornado/requirements.lock)
#                     and the app's requirements (APP_REQUIREMENTS_FILE, default the demo's
#                     requirements/app.lock) for CPython 3.13 manylinux x86_64, so no
#                     `docker build` step needs the network.
#   build.sh all      wheels, then base.
#   build.sh status   what each image name resolves to now.
#   build.sh names    the image names in use, as NAME=value lines.
#   build.sh clean    remove the stand-ins (only images labelled org.flaskstack.standin=true).
#   build.sh cluster  DIND_IMAGE and REGISTRY_IMAGE, the same way, for `make cluster-up`: Docker
#                     engines in containers (Swarm nodes) and the registry they pull from.
#   build.sh monitoring  PROMETHEUS_IMAGE, NGINX_EXPORTER_IMAGE and POSTGRES_EXPORTER_IMAGE, the
#                     same way, for the monitoring profile.
#   build.sh acme     LEGO_IMAGE, the same way: the ACME client that keeps DOMAIN's certificate.
#   build.sh acme-test  LEGO_IMAGE and PEBBLE_IMAGE (Let's Encrypt's ACME test server), for the
#                     end-to-end test of certificates from an ACME directory.
#   build.sh names-cluster, names-monitoring, names-acme  those image names, as NAME=value lines.
#
# Every step is idempotent: a second run rebuilds nothing and says so. A stand-in is rebuilt only
# when its recipe (this script's code or the files under deploy/images/<kind>/) changed.
# See deploy/images/README.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF=$HERE/$(basename "${BASH_SOURCE[0]}")
ROOT=$(cd "$HERE/../.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
STATE_DIR=$BUILD_DIR/images
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PULL_TIMEOUT=${PULL_TIMEOUT:-60}
IMAGES_PULL=${IMAGES_PULL:-1}          # 0: never try the registry, go straight to stand-ins
IMAGES_PARALLEL=${IMAGES_PARALLEL:-1}  # 0: build the stand-ins one after the other
LABEL=org.flaskstack.standin
KINDS=(python nginx postgres)
# `build.sh cluster`: the nodes and the registry of the three-node test cluster (cluster.sh).
CLUSTER_KINDS=(dind registry)
# `build.sh monitoring`: Prometheus and the nginx and Postgres exporters.
MONITORING_KINDS=(prometheus nginxexporter pgexporter)
# `build.sh acme`: lego, the ACME client; `build.sh acme-test` adds pebble, the ACME test server.
ACME_KINDS=(lego)
ACME_TEST_KINDS=(lego pebble)

# ---------------------------------------------------------------------------------------------
# Output and helpers

now_ms() { date +%s%3N; }
# Seconds since a now_ms value, one decimal.
since() { local d=$(($(now_ms) - $1)); printf '%d.%d s' $((d / 1000)) $((d % 1000 / 100)); }
say() { printf '%s %s\n' "${TAG:-images:}" "$*"; }
die() { say "ERROR: $*" >&2; exit 1; }

# Run a command as root: directly when we are root, else through sudo.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# This script's root-only steps (sudo drops the environment, so pass what they read).
as_root_self() { as_root env BUILD_DIR="$BUILD_DIR" DEBIAN_MIRROR="$DEBIAN_MIRROR" bash "$SELF" "$@"; }

# Image names: the environment wins, then ./.env (as docker-compose reads it), then the pinned tags.
env_file_value() {
	[ -f "$ROOT/.env" ] || return 0
	sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$ROOT/.env" | tail -n1 | tr -d "\"'" | sed 's/[[:space:]]*$//'
}
image_name() {
	local var=$1 default=$2 value
	value=${!var:-}
	[ -n "$value" ] || value=$(env_file_value "$var")
	printf '%s' "${value:-$default}"
}
PYTHON_IMAGE=$(image_name PYTHON_IMAGE python:3.13-slim-trixie)
NGINX_IMAGE=$(image_name NGINX_IMAGE nginx:1.30-trixie)
POSTGRES_IMAGE=$(image_name POSTGRES_IMAGE postgres:17-trixie)
# The cluster's: no official image runs an engine without --privileged, so the node is always
# this project's own; the registry is the official one when it can be pulled.
DIND_IMAGE=$(image_name DIND_IMAGE flaskstack/dind:26-trixie)
REGISTRY_IMAGE=$(image_name REGISTRY_IMAGE registry:2.8.3)
# The monitoring profile's: the official tags of the versions Debian trixie packages.
PROMETHEUS_IMAGE=$(image_name PROMETHEUS_IMAGE prom/prometheus:v2.53.3)
NGINX_EXPORTER_IMAGE=$(image_name NGINX_EXPORTER_IMAGE nginx/nginx-prometheus-exporter:1.4.1)
POSTGRES_EXPORTER_IMAGE=$(image_name POSTGRES_EXPORTER_IMAGE quay.io/prometheuscommunity/postgres-exporter:v0.17.1)
# The ACME images: the official tags of the versions Debian trixie packages.
LEGO_IMAGE=$(image_name LEGO_IMAGE goacme/lego:v4.9.1)
PEBBLE_IMAGE=$(image_name PEBBLE_IMAGE ghcr.io/letsencrypt/pebble:v2.6.0)

image_of() {
	case $1 in
	python) echo "$PYTHON_IMAGE" ;;
	nginx) echo "$NGINX_IMAGE" ;;
	postgres) echo "$POSTGRES_IMAGE" ;;
	dind) echo "$DIND_IMAGE" ;;
	registry) echo "$REGISTRY_IMAGE" ;;
	prometheus) echo "$PROMETHEUS_IMAGE" ;;
	nginxexporter) echo "$NGINX_EXPORTER_IMAGE" ;;
	pgexporter) echo "$POSTGRES_EXPORTER_IMAGE" ;;
	lego) echo "$LEGO_IMAGE" ;;
	pebble) echo "$PEBBLE_IMAGE" ;;
	esac
}

# ---------------------------------------------------------------------------------------------
# Recipes: the Debian suite and packages of each stand-in (versions are checked in <kind>_configure).
# Debian 13 (trixie) has python3.13 and postgresql-17 but nginx 1.26; `server ... resolve` in an
# upstream needs nginx >= 1.27.3, so nginx comes from testing (Debian 12's debootstrap knows that
# suite only as "testing").

recipe_suite() { case $1 in nginx) echo testing ;; *) echo trixie ;; esac; }
recipe_packages() {
	case $1 in
	python) echo python3,python3-venv,python-is-python3 ;;
	nginx) echo nginx,gettext-base ;;
	postgres) echo postgresql-17 ;;
	dind) echo docker.io,docker-cli,iptables ;;
	registry) echo docker-registry ;;
	prometheus) echo prometheus ;;
	nginxexporter) echo prometheus-nginx-exporter ;;
	pgexporter) echo prometheus-postgres-exporter ;;
	lego) echo lego,ca-certificates ;;
	pebble) echo pebble ;;
	esac
}

# A stand-in is rebuilt when its recipe changes: the code that builds it (function bodies, so
# comments do not count) and the files it copies in.
recipe_hash() {
	local kind=$1
	{
		recipe_suite "$kind"
		recipe_packages "$kind"
		# shellcheck disable=SC2046  # one function name per word
		declare -f cmd_rootfs import_changes stop_signal $(compgen -A function | grep -E "^(rootfs_|${kind}_)")
		if [ -d "$HERE/$kind" ]; then
			(cd "$HERE/$kind" && find . -type f -print0 | sort -z | xargs -0r sha256sum)
		fi
	} | sha256sum | cut -c1-16
}

# ---------------------------------------------------------------------------------------------
# Root filesystem steps. These run as root (`build.sh _rootfs KIND DIR`, through sudo when needed)
# and only touch DIR/rootfs.

# dpkg settings the official Debian images carry: no fsync (a crash means a rebuild anyway),
# and no docs (licences stay), man pages or translations. They also keep later `apt-get install`s
# in derived images fast and lean.
rootfs_dpkg_config() {
	local r=${1:?}
	cat >"$r/etc/dpkg/dpkg.cfg.d/docker-standin" <<-'EOF'
		force-unsafe-io
		path-exclude /usr/share/doc/*
		path-include /usr/share/doc/*/copyright
		path-exclude /usr/share/man/*
		path-exclude /usr/share/info/*
		path-exclude /usr/share/locale/*
		path-exclude /usr/share/lintian/*
	EOF
}

# Remove what a container never needs: what the first stage unpacked before dpkg's excludes were
# in place (docs, man pages, translations), apt lists and caches, logs.
rootfs_trim() {
	local r=${1:?rootfs path}
	[ "$r" != / ] || die "refusing to trim /"
	find "$r/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
	find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
	rm -rf "$r"/usr/share/{man,info,locale,lintian,linda}/* "$r"/usr/share/lintian
	rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb
	rm -rf "$r"/var/cache/debconf/*-old "$r"/var/lib/dpkg/*-old "$r"/var/cache/ldconfig/aux-cache
	find "$r/var/log" -type f -delete
	# Docker supplies /dev, /proc, /sys, /etc/hostname, /etc/hosts and /etc/resolv.conf.
	rm -rf "${r:?}"/dev/* "$r"/proc/* "$r"/sys/* "$r"/run/*.pid "$r"/tmp/* "$r"/var/tmp/*
	rm -f "$r/etc/hostname" "$r/etc/resolv.conf"
	cat >"$r/etc/apt/apt.conf.d/docker-clean" <<-'EOF'
		DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
		APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
		Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
		Acquire::Languages "none";
	EOF
}

# The apt sources the official Debian images carry, for images derived on a connected host.
rootfs_sources() {
	local r=${1:?} suite=$2
	rm -f "$r/etc/apt/sources.list"
	cat >"$r/etc/apt/sources.list.d/debian.sources" <<-EOF
		Types: deb
		URIs: http://deb.debian.org/debian
		Suites: $suite $suite-updates
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

		Types: deb
		URIs: http://deb.debian.org/debian-security
		Suites: $suite-security
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	EOF
}

# Fail loudly unless "$have" >= "$want" and, when given, has the right major.minor prefix.
rootfs_require_version() {
	local what=$1 have=$2 want=$3 prefix=${4:-}
	dpkg --compare-versions "$have" ge "$want" || die "$what $have is older than $want"
	case $have in "$prefix"*) ;; *) die "$what $have is not $prefix*" ;; esac
	echo "$have"
}

python_configure() {
	local r=${1:?} version
	version=$(chroot "$r" python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
	rootfs_require_version "python3" "$version" 3.13.0 3.13.
}

nginx_configure() {
	local r=${1:?} version
	version=$(chroot "$r" nginx -v 2>&1 | sed -n 's|^nginx version: nginx/||p')
	rootfs_require_version "nginx" "$version" 1.27.3 >/dev/null
	# The official image's account: nginx, uid/gid 101.
	chroot "$r" groupadd --system --gid 101 nginx
	chroot "$r" useradd --system --uid 101 --gid nginx --no-create-home --home-dir /nonexistent \
		--shell /usr/sbin/nologin --comment "nginx user" nginx
	# The official layout: nginx.conf + conf.d/*.conf; no Debian sites-*/modules-* indirection.
	rm -rf "$r"/etc/nginx/{sites-available,sites-enabled,modules-available,modules-enabled,snippets}
	rm -rf "$r"/var/www
	install -m 0644 "$HERE/nginx/nginx.conf" "$r/etc/nginx/nginx.conf"
	install -m 0644 "$HERE/nginx/default.conf" "$r/etc/nginx/conf.d/default.conf"
	install -m 0644 "$HERE/nginx/50x.html" "$r/usr/share/nginx/html/50x.html"
	# Logs go to the container's stdout/stderr.
	ln -sf /dev/stdout "$r/var/log/nginx/access.log"
	ln -sf /dev/stderr "$r/var/log/nginx/error.log"
	install -m 0755 "$HERE/nginx/docker-entrypoint.sh" "$r/docker-entrypoint.sh"
	install -d -m 0755 "$r/docker-entrypoint.d"
	install -m 0755 "$HERE/nginx/20-envsubst-on-templates.sh" "$r/docker-entrypoint.d/"
	echo "$version"
}

# The cluster's stand-ins (`build.sh cluster`), with their import settings in
# <kind>_import_changes.

dind_configure() {
	local r=${1:?} version
	version=$(chroot "$r" dockerd --version | sed -n 's/^Docker version \([0-9.]*\).*/\1/p')
	rootfs_require_version "dockerd" "$version" 26.0 >/dev/null
	install -m 0755 "$HERE/dind/dind-entrypoint.sh" "$r/usr/local/bin/dind-entrypoint"
	install -d -m 0710 "$r/var/lib/docker"
	echo "$version"
}

dind_import_changes() {
	printf '%s\n' "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		"ENV DOCKER_VERSION=$1" 'VOLUME /var/lib/docker' \
		'ENTRYPOINT ["dind-entrypoint"]' 'CMD []'
}

registry_configure() {
	local r=${1:?} version
	# "docker-registry github.com/docker/distribution 2.8.3+ds1" or "... v2.8.3".
	version=$(chroot "$r" docker-registry --version | sed -n 's/.* v\{0,1\}\([0-9][0-9.]*\).*/\1/p')
	rootfs_require_version "docker-registry" "$version" 2.8 2. >/dev/null
	# The official image's command name and configuration path.
	ln -sf /usr/bin/docker-registry "$r/usr/local/bin/registry"
	install -d -m 0755 "$r/etc/docker/registry" "$r/var/lib/registry"
	install -m 0644 "$HERE/registry/config.yml" "$r/etc/docker/registry/config.yml"
	echo "$version"
}

registry_import_changes() {
	printf '%s\n' "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		'VOLUME /var/lib/registry' 'EXPOSE 5000' \
		'ENTRYPOINT ["registry", "serve"]' 'CMD ["/etc/docker/registry/config.yml"]'
}

# The monitoring profile's stand-ins (`build.sh monitoring`), with their import settings in
# <kind>_import_changes. Debian merged /usr, so /bin/x is /usr/bin/x: the official paths under
# /bin exist as soon as the binary is in /usr/bin. All three run as nobody (65534:65534).

prometheus_configure() {
	local r=${1:?} version
	# "prometheus, version 2.53.3+ds1 (branch: debian/sid, ...)"
	version=$(chroot "$r" prometheus --version 2>&1 | sed -n 's/^prometheus, version \([0-9][0-9.]*\).*/\1/p')
	rootfs_require_version "prometheus" "$version" 2.53.0 2.53. >/dev/null
	case $(chroot "$r" promtool --version 2>&1) in "promtool, version $version"*) ;; *) die "promtool is not $version" ;; esac
	[ -x "$r/bin/prometheus" ] && [ -x "$r/bin/promtool" ]
	# The official image's default configuration (scrapes itself) and layout: the data directory
	# /prometheus and /etc/prometheus belong to nobody, so a fresh named volume is writable.
	install -m 0644 "$HERE/prometheus/prometheus.yml" "$r/etc/prometheus/prometheus.yml"
	chown 65534:65534 "$r/etc/prometheus" "$r/etc/prometheus/prometheus.yml"
	install -d -o 65534 -g 65534 -m 0755 "$r/prometheus"
	# Debian's console defaults are /etc/prometheus/{consoles,console_libraries}; the official
	# image passes /usr/share/prometheus/..., so both spellings work.
	ln -sfn /etc/prometheus/consoles "$r/usr/share/prometheus/consoles"
	ln -sfn /etc/prometheus/console_libraries "$r/usr/share/prometheus/console_libraries"
	echo "$version"
}

prometheus_import_changes() {
	printf '%s\n' "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		'USER 65534' 'WORKDIR /prometheus' 'VOLUME /prometheus' 'EXPOSE 9090' \
		'ENTRYPOINT ["/bin/prometheus"]' \
		'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]'
}

nginxexporter_configure() {
	local r=${1:?} version
	# "nginx_exporter, version 1.4.1 (branch: debian/sid, ...)"
	version=$(chroot "$r" prometheus-nginx-exporter --version 2>&1 | sed -n 's/^nginx_exporter, version \([0-9][0-9.]*\).*/\1/p')
	rootfs_require_version "nginx-prometheus-exporter" "$version" 1.0 1. >/dev/null
	# 1.x takes --nginx.scrape-uri and --web.listen-address (0.x took single-dash flags).
	case $(chroot "$r" prometheus-nginx-exporter --help 2>&1) in *--nginx.scrape-uri=*) ;; *) die "no --nginx.scrape-uri flag" ;; esac
	# The official image's command.
	ln -sf prometheus-nginx-exporter "$r/usr/bin/nginx-prometheus-exporter"
	echo "$version"
}

nginxexporter_import_changes() {
	printf '%s\n' "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		'USER 65534' 'EXPOSE 9113' 'ENTRYPOINT ["/usr/bin/nginx-prometheus-exporter"]' 'CMD []'
}

pgexporter_configure() {
	local r=${1:?} version
	# "postgres_exporter, version 0.17.1 (branch: debian/sid, ...)"
	version=$(chroot "$r" prometheus-postgres-exporter --version 2>&1 | sed -n 's/^postgres_exporter, version \([0-9][0-9.]*\).*/\1/p')
	rootfs_require_version "postgres_exporter" "$version" 0.17.0 0.17. >/dev/null
	# The official image's command (/bin/postgres_exporter, through Debian's merged /usr).
	ln -sf prometheus-postgres-exporter "$r/usr/bin/postgres_exporter"
	echo "$version"
}

pgexporter_import_changes() {
	printf '%s\n' "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		'USER 65534' 'EXPOSE 9187' 'ENTRYPOINT ["/bin/postgres_exporter"]' 'CMD []'
}

# The ACME stand-ins (`build.sh acme`, `build.sh acme-test`), with their import settings in
# <kind>_import_changes. Both run as the service chooses (the official images run as root).

lego_configure() {
	local r=${1:?} version
	# Debian's build says "lego version dev": the package's version is the program's.
	version=$(chroot "$r" dpkg-query -W -f '${Version}' lego | sed 's/[+~-].*//')
	chroot "$r" lego --version >/dev/null
	rootfs_require_version "lego" "$version" 4.9.0 4. >/dev/null
	# The official image's command.
	ln -sf /usr/bin/lego "$r/lego"
	echo "$version"
}

lego_import_changes() {
	printf '%s\n' "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		'ENTRYPOINT ["/lego"]' 'CMD []'
}

pebble_configure() {
	local r=${1:?} version
	version=$(chroot "$r" dpkg-query -W -f '${Version}' pebble | sed 's/[+~-].*//')
	rootfs_require_version "pebble" "$version" 2.4.0 2. >/dev/null
	# The official image's command and configuration (ACME on 14000, management on 15000); the
	# listener's certificate and key, /test/certs/localhost/{cert,key}.pem, are the user's to
	# mount (Debian ships no test keys).
	ln -sf /usr/bin/pebble "$r/app"
	install -d -m 0755 "$r/test/config" "$r/test/certs/localhost"
	install -m 0644 "$HERE/pebble/pebble-config.json" "$r/test/config/pebble-config.json"
	echo "$version"
}

pebble_import_changes() {
	printf '%s\n' "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		'EXPOSE 14000 15000' 'ENTRYPOINT ["/app"]' 'CMD ["-config", "/test/config/pebble-config.json"]'
}

postgres_configure() {
	local r=${1:?} version old_uid old_gid
	version=$(chroot "$r" /usr/lib/postgresql/17/bin/postgres --version | awk '{print $3}')
	rootfs_require_version "postgres" "$version" 17.0 17. >/dev/null
	# Debian's package made a "main" cluster; the entrypoint makes its own in $PGDATA.
	rm -rf "$r/var/lib/postgresql/17" "$r/etc/postgresql/17"
	sed -ri 's/^#?(create_main_cluster)\s*=.*/\1 = false/' "$r/etc/postgresql-common/createcluster.conf"
	# The official image's account is postgres uid/gid 999; Debian's postinst picked the next free id.
	old_uid=$(chroot "$r" id -u postgres)
	old_gid=$(chroot "$r" id -g postgres)
	if [ "$old_uid" != 999 ] || [ "$old_gid" != 999 ]; then
		chroot "$r" groupmod --gid 999 postgres
		chroot "$r" usermod --uid 999 --gid 999 postgres
		find "$r" -xdev -uid "$old_uid" -exec chown -h 999 {} +
		find "$r" -xdev -gid "$old_gid" -exec chgrp -h 999 {} +
	fi
	# Listen on every address by default, as the official image does (initdb copies this sample).
	sed -ri "s/^#?(listen_addresses)\s*=\s*\S+.*/\1 = '*'/" "$r/usr/share/postgresql/17/postgresql.conf.sample"
	grep -q "^listen_addresses = '\*'" "$r/usr/share/postgresql/17/postgresql.conf.sample"
	rm -rf "$r/usr/share/postgresql/17/man"
	# Docker copies an image directory's owner and mode into a new, empty named volume mounted
	# on it: this is what lets `user: "999:999"` initdb into a fresh volume.
	install -d -o 999 -g 999 -m 0700 "$r/var/lib/postgresql/data"
	chown 999:999 "$r/var/lib/postgresql"
	install -d -o 999 -g 999 -m 3777 "$r/run/postgresql"
	install -d -m 0755 "$r/docker-entrypoint-initdb.d"
	install -m 0755 "$HERE/postgres/docker-entrypoint.sh" "$r/usr/local/bin/docker-entrypoint.sh"
	ln -sf usr/local/bin/docker-entrypoint.sh "$r/docker-entrypoint.sh"
	echo "$version"
}

# build.sh _rootfs KIND DIR: debootstrap DIR/rootfs, configure and trim it; the checked version
# goes to DIR/version. Runs as root.
# Two stages, so that dpkg's settings are in place before it installs anything: the first
# downloads and unpacks, the second (dpkg inside the tree) installs without fsync and without
# docs, man pages and translations.
cmd_rootfs() {
	local kind=$1 dir=${2:?} r=$2/rootfs t log="$STATE_DIR/$1.log"
	TAG="[$kind]"
	t=$(now_ms)
	say "debootstrap --variant=minbase $(recipe_suite "$kind") +$(recipe_packages "$kind") (log: ${log#"$ROOT"/})"
	if ! debootstrap --foreign --variant=minbase --components=main --include="$(recipe_packages "$kind")" \
		"$(recipe_suite "$kind")" "$r" "$DEBIAN_MIRROR" >>"$log" 2>&1; then
		tail -n 20 "$log" | sed "s/^/$TAG   /" >&2
		die "debootstrap (download and unpack) failed"
	fi
	say "debootstrap: downloaded and unpacked in $(since "$t")"
	t=$(now_ms)
	rootfs_dpkg_config "$r"
	if ! chroot "$r" /debootstrap/debootstrap --second-stage >>"$log" 2>&1; then
		tail -n 20 "$log" | sed "s/^/$TAG   /" >&2
		die "debootstrap (second stage: dpkg) failed"
	fi
	rootfs_unmount "$dir"
	say "debootstrap: installed, $(du -sm "$r" | cut -f1) MB in $(since "$t")"
	t=$(now_ms)
	"${kind}_configure" "$r" >"$dir/version"
	rootfs_sources "$r" "$(recipe_suite "$kind")"
	rootfs_trim "$r"
	say "configured and trimmed: $kind $(cat "$dir/version"), $(du -sm "$r" | cut -f1) MB in $(since "$t")"
}

# Unmount anything debootstrap may have left mounted under DIR, then delete DIR without ever
# crossing into another filesystem.
cmd_rmtree() {
	local dir=${1:?}
	[ -d "$dir" ] || return 0
	rootfs_unmount "$dir"
	rm -rf --one-file-system "$dir"
}

# Unmount whatever is mounted under DIR (debootstrap mounts /proc and /sys while it runs and can
# leave them behind when killed), deepest first.
rootfs_unmount() {
	local m
	findmnt -rn -o TARGET | { grep -F "${1:?}/" || true; } | sort -r | while read -r m; do
		umount -l "$m" || true
	done
}

# ---------------------------------------------------------------------------------------------
# Images

# The settings `docker import --change` gives each stand-in (docker 20.10's import accepts CMD,
# ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, USER, VOLUME, WORKDIR; STOPSIGNAL is added after).
# Like the official images, none sets USER: the stack chooses the user per service.
import_changes() {
	local kind=$1 version=$2 base=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	case $kind in
	python)
		printf '%s\n' "ENV $base" "ENV LANG=C.UTF-8" "ENV PYTHON_VERSION=$version" 'CMD ["python3"]'
		;;
	nginx)
		printf '%s\n' "ENV $base" "ENV NGINX_VERSION=$version" 'EXPOSE 80' \
			'ENTRYPOINT ["/docker-entrypoint.sh"]' 'CMD ["nginx", "-g", "daemon off;"]'
		;;
	postgres)
		# The server binaries come first on PATH: Debian's /usr/bin wrappers are Perl scripts.
		printf '%s\n' "ENV PATH=/usr/lib/postgresql/17/bin:${base#PATH=}" "ENV LANG=C.UTF-8" \
			'ENV PG_MAJOR=17' "ENV PG_VERSION=$version" 'ENV PGDATA=/var/lib/postgresql/data' \
			'VOLUME /var/lib/postgresql/data' 'EXPOSE 5432' \
			'ENTRYPOINT ["docker-entrypoint.sh"]' 'CMD ["postgres"]'
		;;
	esac
}
stop_signal() { case $1 in nginx) echo SIGQUIT ;; postgres) echo SIGINT ;; *) echo SIGTERM ;; esac; }

# Run each stand-in once before tagging it: a broken image never gets the name.
smoke_test() {
	local kind=$1 image=$2
	case $kind in
	python) docker run --rm --network none "$image" sh -c 'python3 -m venv /tmp/v && /tmp/v/bin/python -V' ;;
	nginx) docker run --rm --network none "$image" nginx -t -q ;;
	postgres) docker run --rm --network none --user 999:999 "$image" sh -c 'postgres --version && pg_isready --version' ;;
	dind) docker run --rm --network none --entrypoint sh "$image" -c 'dockerd --version && docker --version && iptables --version' ;;
	registry) docker run --rm --network none --entrypoint sh "$image" -c 'registry --version && test -f /etc/docker/registry/config.yml' ;;
	prometheus)
		docker run --rm --network none --entrypoint sh "$image" -c \
			'promtool --version && prometheus --version && promtool check config /etc/prometheus/prometheus.yml' &&
			smoke_starts "$image" 4 'Server is ready to receive web requests'
		;;
	nginxexporter)
		docker run --rm --network none "$image" --version &&
			smoke_starts "$image" 2 'Listening on' --nginx.scrape-uri=http://nginx:8081/nginx/status --web.listen-address=:9113
		;;
	pgexporter)
		docker run --rm --network none "$image" --version &&
			smoke_starts "$image" 2 'Listening on' --web.listen-address=:9187
		;;
	lego) docker run --rm --network none "$image" --version ;;
	# pebble needs its listener's certificate to start: check that the binary runs and reads flags.
	pebble) docker run --rm --network none --entrypoint sh "$image" -c '/app -h 2>&1 | grep -q -- -config' ;;
	esac
}

# smoke_test helper: run IMAGE's entrypoint with ARGS (none: the image's CMD) for SECONDS under
# `timeout` inside the container; it must still be running then (no usage error, no crash) and
# its log must contain TEXT.
smoke_starts() {
	local image=$1 seconds=$2 text=$3 entrypoint out rc=0
	shift 3
	entrypoint=$(docker image inspect -f '{{join .Config.Entrypoint " "}}' "$image")
	if [ $# = 0 ]; then
		# shellcheck disable=SC2046  # the image's CMD, one argument per word
		set -- $(docker image inspect -f '{{join .Config.Cmd " "}}' "$image")
	fi
	out=$(docker run --rm --network none --entrypoint timeout "$image" "$seconds" "$entrypoint" "$@" 2>&1) || rc=$?
	printf '%s\n' "$out"
	[ "$rc" = 124 ] || { echo "smoke test: $entrypoint exited with $rc before ${seconds} s"; return 1; }
	grep -qF "$text" <<<"$out" || { echo "smoke test: no \"$text\" in the log"; return 1; }
}

# Build one stand-in: rootfs (as root) -> tar | docker import -> STOPSIGNAL -> smoke test -> tag.
# Runs as its own process (`build.sh _standin KIND IMAGE HASH`); on any failure the temp tree and
# the untagged image are removed.
build_standin() {
	local kind=$1 image=$2 hash=$3 t0 t version old line
	TAG="[$kind]"
	t0=$(now_ms)
	dir=$(mktemp -d "$STATE_DIR/rootfs-$kind.XXXXXX")
	ids=()
	interrupted=0
	trap 'build_cleanup' EXIT
	trap 'interrupted=1; exit 143' INT TERM
	: >"$STATE_DIR/$kind.log"
	as_root_self _rootfs "$kind" "$dir"
	version=$(cat "$dir/version")

	t=$(now_ms)
	local changes=()
	while IFS= read -r line; do changes+=(--change "$line"); done < <(
		# A kind with its own <kind>_import_changes (the cluster's) leaves import_changes, part
		# of every base image's recipe hash, unchanged.
		if declare -F "${kind}_import_changes" >/dev/null; then
			"${kind}_import_changes" "$version"
		else
			import_changes "$kind" "$version"
		fi
	)
	changes+=(--change "LABEL $LABEL=true" --change "LABEL $LABEL.recipe=$hash"
		--change "LABEL $LABEL.suite=$(recipe_suite "$kind")" --change "LABEL $LABEL.version=$version")
	ids+=("$(as_root tar --numeric-owner -C "$dir/rootfs" -cf - . | docker import "${changes[@]}" -)")
	# docker 20.10 refuses `import --change STOPSIGNAL`; a metadata-only build adds it (no layer).
	ids+=("$(printf 'FROM %s\nSTOPSIGNAL %s\n' "${ids[0]}" "$(stop_signal "$kind")" |
		DOCKER_BUILDKIT=0 docker build -q - 2>>"$STATE_DIR/$kind.log")")
	say "imported: $(docker image inspect -f '{{.Size}}' "${ids[1]}" | awk '{printf "%d MB", $1/1e6}') in $(since "$t")"
	as_root_self _rmtree "$dir"

	t=$(now_ms)
	if ! smoke_test "$kind" "${ids[1]}" >>"$STATE_DIR/$kind.log" 2>&1; then
		tail -n 20 "$STATE_DIR/$kind.log" | sed "s/^/$TAG   /" >&2
		die "smoke test of the new image failed; $image not tagged"
	fi
	old=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
	docker tag "${ids[1]}" "$image"
	ids=()
	# A stand-in this one replaces would linger untagged: remove it unless a container uses it.
	if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{.Id}}' "$image")" ]; then
		docker rmi "$old" >/dev/null 2>&1 || say "old image ${old:7:12} is still in use; not removed"
	fi
	say "smoke test passed in $(since "$t"); tagged $image"
	say "built stand-in $image ($kind $version) in $(since "$t0")"
}

# EXIT trap of build_standin: whatever is left of a build that did not finish.
build_cleanup() {
	local i
	# Interrupted: processes of this build may still be writing there; on_interrupt removes it.
	if [ "$interrupted" = 0 ]; then as_root_self _rmtree "$dir" || true; fi
	for ((i = ${#ids[@]} - 1; i >= 0; i--)); do docker rmi "${ids[$i]}" >/dev/null 2>&1 || true; done
}

# What KIND's image is now: "reused (...)", "stale (...)" (a stand-in from another recipe) or "missing".
image_state() {
	local kind=$1 image recipe want
	image=$(image_of "$kind")
	if ! docker image inspect "$image" >/dev/null 2>&1; then
		echo "missing"
		return
	fi
	recipe=$(docker image inspect -f "{{index .Config.Labels \"$LABEL.recipe\"}}" "$image" 2>/dev/null || true)
	case $recipe in
	"" | "<no value>") echo "reused (not a stand-in)" ;;
	*)
		want=$(recipe_hash "$kind")
		if [ "$recipe" = "$want" ]; then echo "reused (stand-in, recipe $recipe)"; else echo "stale (stand-in from an older recipe)"; fi
		;;
	esac
}

BUILD_PIDS=()
# Ctrl-C or a CI timeout during the builds: stop every process of every build, wait (up to 15 s)
# until they are gone, then remove their temp trees.
on_interrupt() {
	local p n alive
	trap - INT TERM
	say "interrupted: stopping the stand-in builds"
	for p in "${BUILD_PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
	for ((n = 0; n < 30; n++)); do
		alive=0
		for p in "${BUILD_PIDS[@]}"; do if kill -0 -- "-$p" 2>/dev/null; then alive=1; fi; done
		[ "$alive" = 1 ] || break
		sleep 0.5
	done
	for p in "$STATE_DIR"/rootfs-*; do
		if [ -e "$p" ]; then as_root_self _rmtree "$p" || true; fi
	done
	exit 130
}

ensure_debootstrap() {
	command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] && return 0
	local t
	t=$(now_ms)
	say "installing debootstrap (apt-get)"
	mkdir -p "$STATE_DIR"
	if ! { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } \
		>"$STATE_DIR/apt.log" 2>&1; then
		tail -n 20 "$STATE_DIR/apt.log" >&2
		die "could not install debootstrap"
	fi
	say "installed debootstrap in $(since "$t")"
}

cmd_base() {
	local t0 kind image state todo=() failed=() t
	t0=$(now_ms)
	docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon (docker info failed)"
	mkdir -p "$STATE_DIR"
	exec 9>"$STATE_DIR/.lock"
	flock -n 9 || { say "another build.sh is running; waiting for it"; flock 9; }
	# Temp trees a killed run left behind.
	for d in "$STATE_DIR"/rootfs-*; do
		if [ -e "$d" ]; then as_root_self _rmtree "$d"; fi
	done

	local missing=() pulls=() i
	for kind in "${KINDS[@]}"; do
		image=$(image_of "$kind")
		state=$(image_state "$kind")
		case $state in
		reused*) say "$image: $state" ;;
		stale*) say "$image: stand-in built from an older recipe, replacing it" && missing+=("$kind") ;;
		*) missing+=("$kind") ;;
		esac
	done
	# The pulls run side by side, so a registry that times out costs PULL_TIMEOUT once, not three times.
	if [ "$IMAGES_PULL" = 1 ] && [ ${#missing[@]} -gt 0 ]; then
		t=$(now_ms)
		for kind in "${missing[@]}"; do
			timeout "$PULL_TIMEOUT" docker pull -q "$(image_of "$kind")" >"$STATE_DIR/$kind.pull.log" 2>&1 &
			pulls+=($!)
		done
		for i in "${!missing[@]}"; do
			kind=${missing[$i]}
			if wait "${pulls[$i]}"; then
				say "$(image_of "$kind"): pulled in $(since "$t")"
			else
				say "$(image_of "$kind"): pull failed ($(since "$t"), ${STATE_DIR#"$ROOT"/}/$kind.pull.log): building a stand-in"
				todo+=("$kind")
			fi
		done
	elif [ ${#missing[@]} -gt 0 ]; then
		for kind in "${missing[@]}"; do say "$(image_of "$kind"): not present (IMAGES_PULL=0): building a stand-in"; done
		todo=("${missing[@]}")
	fi
	if [ ${#todo[@]} = 0 ]; then
		say "base images: nothing to build ($(since "$t0"))"
		return 0
	fi

	ensure_debootstrap
	# Each build runs in its own process group (setsid), so an interruption can stop all of it,
	# debootstrap included, before its temp tree is removed.
	trap on_interrupt INT TERM
	for kind in "${todo[@]}"; do
		setsid bash "$SELF" _standin "$kind" "$(image_of "$kind")" "$(recipe_hash "$kind")" &
		BUILD_PIDS+=($!)
		if [ "$IMAGES_PARALLEL" != 1 ]; then wait "$!" || failed+=("$kind"); fi
	done
	if [ "$IMAGES_PARALLEL" = 1 ]; then
		for i in "${!BUILD_PIDS[@]}"; do wait "${BUILD_PIDS[$i]}" || failed+=("${todo[$i]}"); done
	fi
	trap - INT TERM
	[ ${#failed[@]} = 0 ] || die "stand-in build failed for: ${failed[*]} (logs in ${STATE_DIR#"$ROOT"/}/)"
	say "base images: built ${todo[*]} in $(since "$t0")"
}

cmd_status() {
	local kind
	for kind in "${KINDS[@]}"; do say "$(image_of "$kind"): $(image_state "$kind")"; done
}

cmd_clean() {
	local kind image
	for kind in "${KINDS[@]}"; do
		image=$(image_of "$kind")
		if [ "$(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$image" 2>/dev/null)" = true ]; then
			docker rmi "$image" >/dev/null && say "removed stand-in $image"
		fi
	done
}

# ---------------------------------------------------------------------------------------------
# Wheelhouse

TARGET_ARGS=(--python-version 3.13 --implementation cp
	--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64)
BINARY_ARGS=(--only-binary=:all: "${TARGET_ARGS[@]}")
WHEEL_ARGS=("${BINARY_ARGS[@]}" --require-hashes)

# The app's requirements file: APP_REQUIREMENTS_FILE (the Makefile passes APP_SOURCE's
# APP_REQUIREMENTS), else the demo's lock.
cmd_wheels() {
	local host_lock=$ROOT/deploy/tornado/requirements.lock dest=$BUILD_DIR/wheelhouse t0 want pip
	local app_req=${APP_REQUIREMENTS_FILE:-$ROOT/requirements/app.lock}
	t0=$(now_ms)
	[ -f "$host_lock" ] || die "missing $host_lock"
	[ -f "$app_req" ] || die "missing $app_req: set APP_SOURCE and APP_REQUIREMENTS (relative to it) in .env"
	want=$({ cat "$host_lock" "$app_req"; echo "${WHEEL_ARGS[*]}"; } | sha256sum | cut -c1-16)
	mkdir -p "$BUILD_DIR"
	exec 8>"$BUILD_DIR/.wheels.lock"
	flock 8
	# One wheelhouse for every app built here (the demo, yours, the tests' example): each set of
	# requirements adds its files, and wheelhouse.stamps beside it remembers the sets already fetched.
	if grep -qxF "$want" "$dest.stamps" 2>/dev/null; then
		say "wheels: up to date ($(find "$dest" -name '*.whl' | wc -l) wheels, requirements unchanged)"
		return 0
	fi
	if [ -x "$ROOT/.venv/bin/python" ]; then pip=("$ROOT/.venv/bin/python" -m pip); else pip=(python3 -m pip); fi
	pip+=(download --quiet --disable-pip-version-check --no-input --dest "$dest")
	mkdir -p "$dest"
	say "wheels: pip download for CPython 3.13 manylinux x86_64 from ${host_lock#"$ROOT"/} and ${app_req#"$ROOT"/}"
	# A lock names every package already: --no-deps, since pip would otherwise judge markers
	# such as python_full_version by the host's Python, not 3.13.
	"${pip[@]}" "${WHEEL_ARGS[@]}" --no-deps -r "$host_lock"
	# The app's file may have no hashes (pip checks them when it has); a file with hashes is a
	# lock, taken as it is, and one without is resolved.
	local resolve=()
	grep -q -- '--hash=' "$app_req" && resolve=(--no-deps)
	if ! "${pip[@]}" "${BINARY_ARGS[@]}" "${resolve[@]}" -r "$app_req" 2>"$BUILD_DIR/.pip.err"; then
		# A requirement published only as a source distribution: take each one as it is
		# published (a wheel where there is one), without resolving again; the app build turns
		# a source distribution into a wheel with the image's own Python, and pip checks it
		# against the file's hash first when the file has hashes.
		say "wheels: not every requirement has a wheel for CPython 3.13; taking source distributions for those"
		"${pip[@]}" --no-deps --prefer-binary "${TARGET_ARGS[@]}" -r "$app_req" \
			|| { cat "$BUILD_DIR/.pip.err" >&2; die "wheels: pip could not fetch ${app_req#"$ROOT"/}"; }
	fi
	rm -f "$BUILD_DIR/.pip.err"
	if find "$dest" -name '*.tar.gz' -o -name '*.zip' | grep -q .; then
		# What pip needs to build a source distribution, offline.
		"${pip[@]}" "${BINARY_ARGS[@]}" setuptools wheel
	fi
	echo "$want" >>"$dest.stamps"
	say "wheels: $(find "$dest" -name '*.whl' | wc -l) wheels, $(du -sm "$dest" | cut -f1) MB in ${dest#"$ROOT"/}/ ($(since "$t0"))"
}

# ---------------------------------------------------------------------------------------------

usage() { sed -n '2,22s/^# \{0,1\}//p' "$SELF"; }

main() {
	local cmd=${1:-help}
	shift || true
	case $cmd in
	base) cmd_base ;;
	wheels) cmd_wheels ;;
	all) cmd_wheels && cmd_base ;;
	status) cmd_status ;;
	names) printf 'PYTHON_IMAGE=%s\nNGINX_IMAGE=%s\nPOSTGRES_IMAGE=%s\n' "$PYTHON_IMAGE" "$NGINX_IMAGE" "$POSTGRES_IMAGE" ;;
	clean) cmd_clean ;;
	cluster) KINDS=("${CLUSTER_KINDS[@]}") && cmd_base ;;
	names-cluster) printf 'DIND_IMAGE=%s\nREGISTRY_IMAGE=%s\n' "$DIND_IMAGE" "$REGISTRY_IMAGE" ;;
	monitoring) KINDS=("${MONITORING_KINDS[@]}") && cmd_base ;;
	names-monitoring)
		printf 'PROMETHEUS_IMAGE=%s\nNGINX_EXPORTER_IMAGE=%s\nPOSTGRES_EXPORTER_IMAGE=%s\n' \
			"$PROMETHEUS_IMAGE" "$NGINX_EXPORTER_IMAGE" "$POSTGRES_EXPORTER_IMAGE"
		;;
	acme) KINDS=("${ACME_KINDS[@]}") && cmd_base ;;
	acme-test) KINDS=("${ACME_TEST_KINDS[@]}") && cmd_base ;;
	names-acme) printf 'LEGO_IMAGE=%s\nPEBBLE_IMAGE=%s\n' "$LEGO_IMAGE" "$PEBBLE_IMAGE" ;;
	_standin) build_standin "$@" ;;
	_rootfs) cmd_rootfs "$@" ;;
	_rmtree) cmd_rmtree "$@" ;;
	help | -h | --help) usage ;;
	*) usage >&2; exit 2 ;;
	esac
}

main "$@"
