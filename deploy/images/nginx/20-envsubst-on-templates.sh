#!/bin/sh
# Stand-in for the official nginx image's 20-envsubst-on-templates.sh: render every
# $NGINX_ENVSUBST_TEMPLATE_DIR/**/*$NGINX_ENVSUBST_TEMPLATE_SUFFIX into $NGINX_ENVSUBST_OUTPUT_DIR
# (same relative path, suffix dropped). Only variables defined in the environment (and matching
# $NGINX_ENVSUBST_FILTER, a regex) are substituted, so nginx's own $host, $uri, ... survive.
set -eu

ME=$(basename "$0")
log() {
	if [ -z "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ]; then echo "$ME: $*"; fi
}

template_dir=${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}
suffix=${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}
output_dir=${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}
filter=${NGINX_ENVSUBST_FILTER:-}

[ -d "$template_dir" ] || exit 0
if [ ! -w "$output_dir" ]; then
	log "ERROR: $template_dir exists, but $output_dir is not writable"
	exit 0
fi

# "${A} ${B} ..." for every defined variable whose name matches the filter: envsubst's allow-list.
# shellcheck disable=SC2016,SC2046  # literal ${...}; one name per word
defined_envs=$(printf '${%s} ' $(awk "END { for (name in ENVIRON) if (name ~ /${filter}/) print name }" </dev/null))

find "$template_dir" -follow -type f -name "*$suffix" -print | while read -r template; do
	relative_path=${template#"$template_dir/"}
	output_path=$output_dir/${relative_path%"$suffix"}
	mkdir -p "$(dirname "$output_path")"
	log "Running envsubst on $template to $output_path"
	envsubst "$defined_envs" <"$template" >"$output_path"
done
