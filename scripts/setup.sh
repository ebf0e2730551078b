#!/usr/bin/env bash
# One idempotent setup path for a fresh Debian 12 machine with Rust 1.95
# (`scripts/setup.sh --tests` adds what the test suite needs).
# Installs what is missing, builds pg_medallion and installs it into the system
# Postgres 15. A second run installs nothing and only re-copies the extension
# when its build changed. Used by `make demo` and `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGRX_VERSION=0.18.0
APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 libclang-dev cmake sudo pkg-config make)
# `--tests`: also what the test suite needs — a one-node Ceph cluster whose
# RADOS Gateway is the real S3-compatible server the object-store tests use,
# and curl to create its bucket.
# Podman (with runc; crun fails on this kind of machine's cgroups) and
# mmdebstrap build and run the container images and the compose stack
# (docker/, `make images`): no Docker engine is needed.
if [ "${1:-}" = "--tests" ]; then
  APT_PACKAGES+=(ceph-mon ceph-osd radosgw ceph-common curl openssl
    podman runc uidmap slirp4netns fuse-overlayfs mmdebstrap
    golang-github-containernetworking-plugin-dnsname)
fi

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root (or sudo) to run: $*"; fi
}

command -v cargo >/dev/null || die "cargo not found: install Rust 1.95 (rustup) first"

# 1. Debian packages
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -x "$PG_CONFIG" ] || die "$PG_CONFIG missing after install"
# Debian starts a default cluster on 5432 when postgresql-15 is installed; we never use it.

# 2. cargo-pgrx, pinned
if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  log "installing cargo-pgrx $PGRX_VERSION (takes ~4 min once)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi

# 3. pgrx init against Debian's Postgres 15 (no download, no private build)
PGRX_HOME=${PGRX_HOME:-$HOME/.pgrx}
if ! grep -qs "pg15 = \"$PG_CONFIG\"" "$PGRX_HOME/config.toml"; then
  log "cargo pgrx init --pg15 $PG_CONFIG"
  cargo pgrx init --pg15 "$PG_CONFIG" >/dev/null
fi

# 4. The postgres OS user needs to traverse to the project for pg_regress output;
#    private clusters live in /tmp and are owned by postgres.
id postgres >/dev/null 2>&1 || die "no 'postgres' OS user (it comes with postgresql-15)"

# 5. Build pg_medallion and install it into the system Postgres 15 unless the
#    installed files are already exactly this build.
log "building pg_medallion"
pkg=target/pg_medallion-pkg
( cd pg_ext && cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "../$pkg" >/dev/null )
same=1
while IFS= read -r -d '' f; do
  rel=${f#"$pkg"}
  cmp -s "$f" "$rel" || { same=0; break; }
done < <(find "$pkg" -type f -print0)
if [ $same -eq 0 ]; then
  log "installing pg_medallion into $("$PG_CONFIG" --pkglibdir)"
  # Each file is written beside its target and renamed over it: a running
  # Postgres that has the library loaded keeps its old inode instead of
  # reading a file rewritten under it (cp would write in place).
  while IFS= read -r -d '' f; do
    rel=${f#"$pkg"}
    as_root install -D -m "$(stat -c %a "$f")" "$f" "$rel.medallion-new"
    as_root mv -f "$rel.medallion-new" "$rel"
  done < <(find "$pkg" -type f -print0)
else
  log "pg_medallion is up to date in the system Postgres 15"
fi

# 6. Independent Delta readers for the tests (proves other engines read
#    what medallion writes, deletion vectors included): the Python deltalake
#    package and DuckDB with its Delta extension (the wheel ships the
#    extension file; nothing is downloaded at query time), in a private venv.
PY=.medallion/py
if ! "$PY/bin/python" -c "import deltalake, pyarrow, duckdb, duckdb_extension_delta" 2>/dev/null; then
  command -v python3 >/dev/null || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
  log "installing the Python deltalake reader into $PY"
  python3 -m venv "$PY" 2>/dev/null || { as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; python3 -m venv "$PY"; }
  "$PY/bin/pip" install -q --disable-pip-version-check "deltalake>=1.1,<2" "pyarrow>=15" \
    "duckdb==1.5.5" "duckdb-extension-delta==1.5.5"
fi

# 7. `--tests`: the real clients of the API tests — the MCP Python SDK and
#    schemathesis in the same venv — and the `pg` package the SaaS landing
#    loader (examples/landing) runs with under the machine's Node.
if [ "${1:-}" = "--tests" ]; then
  # Podman here: the sandbox's hard ulimits are below podman's defaults, and
  # systemd does not manage cgroups. Written once; an existing file is kept.
  if [ ! -s /etc/containers/containers.conf ]; then
    log "writing /etc/containers/containers.conf (runc, cgroupfs, no default ulimits)"
    as_root mkdir -p /etc/containers
    printf '[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = "cgroupfs"\nruntime = "runc"\n' \
      | as_root tee /etc/containers/containers.conf >/dev/null
  fi
  # cargo-deny checks the crates' licences against deny.toml (`make test`).
  if ! cargo deny --version 2>/dev/null | grep -q '^cargo-deny 0.20'; then
    log "installing cargo-deny 0.20.2 (a few minutes)"
    cargo install -q cargo-deny --version 0.20.2 --locked
  fi
  if ! "$PY/bin/python" -c "import podman_compose" 2>/dev/null; then
    log "installing podman-compose into $PY"
    "$PY/bin/pip" install -q --disable-pip-version-check "podman-compose>=1.4,<2"
  fi
  if ! "$PY/bin/python" -c "import mcp, schemathesis" 2>/dev/null; then
    log "installing the MCP Python SDK and schemathesis into $PY"
    "$PY/bin/pip" install -q --disable-pip-version-check "mcp>=1.20,<2" "schemathesis>=4,<5"
  fi
  command -v node >/dev/null || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  if [ ! -d .medallion/node/node_modules/pg ]; then
    log "installing the landing loader's pg package into .medallion/node"
    mkdir -p .medallion/node
    npm install --silent --no-audit --no-fund --prefix .medallion/node pg@8 >/dev/null
  fi
  # n8n runs the example workflows in the tests. n8n 2.x wants Node >= 24:
  # the npm registry's `node` package ships that binary. 2.40.7 is the
  # newest n8n whose dependencies this registry has (2.41 needs an
  # @n8n/agents release it lacks). Install scripts stay off: they download
  # native builds (Kafka, SQLite) from hosts this machine cannot reach, and
  # the tests keep n8n's database in Postgres.
  N8N_DIR=.medallion/n8n
  # Installed from a lock file (scripts/n8n/package-lock.json, from an
  # install that worked): resolving n8n's ranges afresh meets versions the
  # registry here does not have yet (2026-12-05: ai@7.0.185), and the tree
  # is 2,200 packages. Install scripts stay off except node's own, which
  # fetches the Node 24 binary (`npm rebuild node`).
  if [ ! -x "$N8N_DIR/node_modules/.bin/n8n" ] || [ ! -x "$N8N_DIR/node_modules/.bin/node" ] \
     || ! cmp -s scripts/n8n/package-lock.json "$N8N_DIR/package-lock.json"; then
    log "installing Node 24 and n8n 2.40.7 into $N8N_DIR from scripts/n8n/package-lock.json (a few minutes)"
    mkdir -p "$N8N_DIR"
    cp scripts/n8n/package.json scripts/n8n/package-lock.json "$N8N_DIR/"
    # A registry hiccup fails a large install now and then: three tries,
    # npm's own message shown on the last.
    npm_try() {
      local i
      for i in 1 2 3; do
        "$@" >/dev/null 2>"$N8N_DIR/npm-error.log" && return 0
        log "npm failed (try $i of 3): $(tail -n 3 "$N8N_DIR/npm-error.log" | tr '\n' ' ')"
        sleep 10
      done
      cat "$N8N_DIR/npm-error.log" >&2
      die "could not install into $N8N_DIR with npm"
    }
    npm_try npm ci --ignore-scripts --no-audit --no-fund --prefix "$N8N_DIR"
    npm_try npm rebuild node --prefix "$N8N_DIR"
  fi
fi
