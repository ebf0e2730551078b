#!/usr/bin/env bash
# Private Postgres 15 cluster for humans (tests use the Rust fixture in
# tests/src/cluster.rs, which applies the same settings).
#
#   scripts/pg-cluster.sh start DIR [PORT]   initdb (if needed) + start, prints the URL
#   scripts/pg-cluster.sh stop DIR           fast shutdown
#   scripts/pg-cluster.sh url DIR            prints the connection URL
#
# Postgres refuses to run as root: when run as root the server runs as the
# `postgres` OS user. Knobs (environment): PG_BIN (default Debian's PG15 bindir),
# MEDALLION_MAX_SLOT_WAL_KEEP_SIZE (default 4GB).
set -euo pipefail
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,12p' "$0"; exit 2; }

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 30000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
  echo "no free port found" >&2; return 1
}

case "$cmd" in
  start)
    mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 -N >/dev/null
      port=${3:-$(free_port)}
      cat >> "$dir/data/postgresql.conf" <<CONF
# medallion private cluster
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
wal_level = logical
max_wal_senders = 20
max_replication_slots = 20
max_slot_wal_keep_size = '${MEDALLION_MAX_SLOT_WAL_KEEP_SIZE:-4GB}'
logical_decoding_work_mem = '64MB'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = '256MB'
log_min_messages = warning
CONF
    fi
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >/dev/null
    "$0" url "$dir"
    ;;
  stop) as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null ;;
  url)
    port=$(sed -n "s/^port = \([0-9]*\)$/\1/p" "$dir/data/postgresql.conf" | tail -1)
    echo "postgresql://postgres@127.0.0.1:$port/postgres" ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
