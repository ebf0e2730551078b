#!/usr/bin/env bash
# Entry point of the locally built stand-in for the official `postgres:15-bookworm`
# image (scripts/images.sh builds that base with mmdebstrap, because no image
# can be pulled where the tests run). It keeps the parts of the official
# image's documented contract that medallion's images and compose stack use:
#   POSTGRES_PASSWORD (required unless POSTGRES_HOST_AUTH_METHOD=trust),
#   POSTGRES_USER (default postgres), POSTGRES_DB (default: the user),
#   POSTGRES_INITDB_ARGS, PGDATA, and /docker-entrypoint-initdb.d/*.sh|*.sql|*.sql.gz
#   run once, on an empty data directory, against a server on the local socket.
# Users building medallion-postgres on a machine that can pull get the
# official image and its own entry point instead.
set -Eeuo pipefail

if [ "${1:-postgres}" != postgres ]; then
  exec "$@"
fi
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  chmod 2775 /var/run/postgresql
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
    echo "error: database is uninitialized and POSTGRES_PASSWORD is not set" >&2
    echo "  set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust, not for production)" >&2
    exit 1
  fi
  pwfile=$(mktemp)
  printf '%s\n' "${POSTGRES_PASSWORD:-}" > "$pwfile"
  # shellcheck disable=SC2086
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
    --auth-host="$auth" ${POSTGRES_INITDB_ARGS:-} -D "$PGDATA" >/dev/null
  rm -f "$pwfile"
  {
    echo "listen_addresses = '*'"
  } >> "$PGDATA/postgresql.auto.conf"
  echo "host all all all $auth" >> "$PGDATA/pg_hba.conf"
  echo "host replication all all $auth" >> "$PGDATA/pg_hba.conf"
  # A server on the socket only, for the init scripts.
  pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' $(printf ' %q' "${@:2}")" start >/dev/null
  export PGUSER="$POSTGRES_USER" PGHOST=/var/run/postgresql
  if [ "$POSTGRES_DB" != postgres ]; then
    # (psql interpolates :"db" in what it reads, not in -c)
    echo 'CREATE DATABASE :"db"' | psql -v ON_ERROR_STOP=1 -Xq --dbname postgres --set db="$POSTGRES_DB"
  fi
  export PGDATABASE="$POSTGRES_DB"
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh) echo "running $f"; if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
      *.sql) echo "running $f"; psql -v ON_ERROR_STOP=1 -Xq -f "$f" ;;
      *.sql.gz) echo "running $f"; gunzip -c "$f" | psql -v ON_ERROR_STOP=1 -Xq ;;
      *) if [ -e "$f" ]; then echo "ignoring $f"; fi ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  unset PGHOST PGUSER PGDATABASE
  echo "PostgreSQL init process complete; ready for start up."
fi
exec postgres -D "$PGDATA" "${@:2}"
