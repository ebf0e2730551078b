#!/usr/bin/env bash
# `make images`: the two container images, built with podman (or docker).
#
#   medallion-postgres:$TAG  docker/Dockerfile.postgres
#   medallion:$TAG           docker/Dockerfile.sidecar
#
# Where base images can be pulled, `docker build -f docker/Dockerfile.… .` is
# all a user needs (it compiles from source). Here no registry is reachable,
# so this script first makes the bases the Dockerfiles name from Debian
# packages (mmdebstrap + `podman import`): `debian:bookworm-slim`, and
# `postgres:15-bookworm` with Debian's postgresql-15 and an entry point that
# keeps the official image's contract (docker/base/postgres-entrypoint.sh).
# A base made here carries the label io.medallion.local-base = <hash of what
# made it>; it is remade when that changes, and an image pulled from a
# registry (no label) is never replaced.
#
# Then it packages what this checkout built instead of compiling inside the
# image (a release build with LTO links for ~30 min here): the extension from
# scripts/setup.sh and the sidecar binary of MEDALLION_IMAGE_PROFILE
# (default debug, debug info stripped). Environment:
#   MEDALLION_IMAGE_TAG      tag of both images (default dev)
#   MEDALLION_IMAGE_PROFILE  cargo profile of the packaged sidecar (debug | release)
#   MEDALLION_IMAGE_BIN      package this sidecar binary instead of building one
#   MEDALLION_IMAGES_S3=1    also make localhost/medallion-test-s3 (Debian's Ceph
#                            RGW taking MinIO's settings: the compose `s3`
#                            profile's server in the deploy test, where MinIO
#                            cannot be pulled; docker/s3-ceph/entrypoint.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${MEDALLION_IMAGE_TAG:-dev}
PROFILE=${MEDALLION_IMAGE_PROFILE:-debug}
ENGINE=${MEDALLION_CONTAINER_ENGINE:-podman}
# podman writes OCI images by default, which drop HEALTHCHECK.
FORMAT=(); [ "$ENGINE" = podman ] && FORMAT=(--format docker)
log() { printf '\033[1;36m[images]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[images] error:\033[0m %s\n' "$*" >&2; exit 1; }
command -v "$ENGINE" >/dev/null || die "$ENGINE not found: run scripts/setup.sh --tests (installs podman)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A base image made here from Debian packages, unless an equal one exists.
#   local_base TAG HASH-INPUTS... -- MMDEBSTRAP-ARGS... -- IMPORT-CHANGES...
local_base() {
  local tag=$1; shift
  local inputs=() mm=() changes=()
  while [ "$1" != -- ]; do inputs+=("$1"); shift; done; shift
  while [ "$1" != -- ]; do mm+=("$1"); shift; done; shift
  changes=("$@")
  local hash
  hash=$( { printf '%s\n' "${mm[@]}" "${changes[@]}"; cat "${inputs[@]}" 2>/dev/null; } | sha256sum | cut -c1-16)
  if "$ENGINE" image exists "$tag"; then
    local have
    have=$("$ENGINE" image inspect --format '{{ index .Labels "io.medallion.local-base" }}' "$tag" 2>/dev/null || true)
    if [ "$have" = "$hash" ] || [ -z "$have" ] || [ "$have" = "<no value>" ]; then
      log "base $tag is present"
      return
    fi
  fi
  command -v mmdebstrap >/dev/null || die "mmdebstrap not found: run scripts/setup.sh --tests"
  log "making base $tag from Debian bookworm packages (mmdebstrap, about a minute)"
  mmdebstrap --quiet --variant=minbase \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    "${mm[@]}" bookworm "$work/base.tar" http://deb.debian.org/debian
  local args=()
  for c in "${changes[@]}" "LABEL io.medallion.local-base=$hash"; do args+=(--change "$c"); done
  "$ENGINE" import "${args[@]}" "$work/base.tar" "$tag" >/dev/null
  rm -f "$work/base.tar"
}

local_base docker.io/library/debian:bookworm-slim -- -- \
  'CMD ["bash"]'
local_base docker.io/library/postgres:15-bookworm docker/base/postgres-entrypoint.sh -- \
  --include=postgresql-15,ca-certificates \
  --essential-hook='mkdir -p "$1"/etc/postgresql-common && echo "create_main_cluster = false" > "$1"/etc/postgresql-common/createcluster.conf' \
  --customize-hook='copy-in docker/base/postgres-entrypoint.sh /usr/local/bin' \
  --customize-hook='mv "$1"/usr/local/bin/postgres-entrypoint.sh "$1"/usr/local/bin/docker-entrypoint.sh' \
  --customize-hook='mkdir -p "$1"/docker-entrypoint-initdb.d "$1"/var/lib/postgresql/data' \
  -- \
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/postgresql/15/bin' \
  'ENV PGDATA=/var/lib/postgresql/data' \
  'ENTRYPOINT ["docker-entrypoint.sh"]' \
  'CMD ["postgres"]' \
  'EXPOSE 5432' \
  'STOPSIGNAL SIGINT'

if [ "${MEDALLION_IMAGES_S3:-}" = 1 ]; then
  local_base localhost/medallion-test-s3:latest docker/s3-ceph/entrypoint.sh -- \
    --include=ceph-mon,ceph-osd,radosgw,ceph-common,curl,ca-certificates \
    --customize-hook='copy-in docker/s3-ceph/entrypoint.sh /usr/local/bin' \
    -- \
    'ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]' \
    'EXPOSE 9000' \
    'STOPSIGNAL SIGTERM'
fi

# What this checkout built, as two tiny images the Dockerfiles copy from.
log "packaging pg_medallion and the sidecar ($PROFILE) built by this checkout"
scripts/setup.sh >/dev/null
[ -d target/pg_medallion-pkg/usr ] || die "no target/pg_medallion-pkg: scripts/setup.sh did not build the extension"
mkdir -p "$work/ext" "$work/bin"
cp -R target/pg_medallion-pkg "$work/ext/pkg"
printf 'FROM scratch\nCOPY pkg /pkg\n' > "$work/ext/Containerfile"
if [ -n "${MEDALLION_IMAGE_BIN:-}" ]; then
  src=$MEDALLION_IMAGE_BIN
elif [ "$PROFILE" = release ]; then
  cargo build -q --release -p medallion --bin medallion
  src=${CARGO_TARGET_DIR:-target}/release/medallion
else
  cargo build -q -p medallion --bin medallion
  src=${CARGO_TARGET_DIR:-target}/debug/medallion
fi
objcopy --strip-debug "$src" "$work/bin/medallion"
printf 'FROM scratch\nCOPY medallion /medallion\n' > "$work/bin/Containerfile"
"$ENGINE" build -q -t "localhost/medallion-prebuilt-ext:$TAG" "$work/ext" >/dev/null
"$ENGINE" build -q -t "localhost/medallion-prebuilt-bin:$TAG" "$work/bin" >/dev/null

log "building localhost/medallion-postgres:$TAG"
"$ENGINE" build -q "${FORMAT[@]}" -f docker/Dockerfile.postgres --build-arg "EXT_FROM=localhost/medallion-prebuilt-ext:$TAG" \
  -t "localhost/medallion-postgres:$TAG" . >/dev/null
log "building localhost/medallion:$TAG"
"$ENGINE" build -q "${FORMAT[@]}" -f docker/Dockerfile.sidecar --build-arg "BIN_FROM=localhost/medallion-prebuilt-bin:$TAG" \
  -t "localhost/medallion:$TAG" . >/dev/null
"$ENGINE" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "medallion(-postgres)?:$TAG " >&2
