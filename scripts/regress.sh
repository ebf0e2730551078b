#!/usr/bin/env bash
# SQL golden tests of pg_medallion's user-facing API: pg_regress (from
# postgresql-server-dev-15) against a private cluster, with the layout
# `cargo pgrx regress` uses (pg_ext/tests/pg_regress/{sql,expected}).
#   scripts/regress.sh            run, compare with expected/ (exit 1 on a diff)
#   scripts/regress.sh --accept   run and promote results to expected/ (review the diff!)
set -euo pipefail
cd "$(dirname "$0")/.."
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PG_REGRESS="$(dirname "$("$PG_CONFIG" --pgxs)")/../test/regress/pg_regress"
[ -x "$PG_REGRESS" ] || { echo "pg_regress not found at $PG_REGRESS (install postgresql-server-dev-15: make test does)" >&2; exit 1; }
SRC=pg_ext/tests/pg_regress
OUT=target/regress
TESTS=$(cd "$SRC/sql" && ls *.sql | sed 's/\.sql$//' | grep -v '^setup$' | sort)
rm -rf "$OUT"; mkdir -p "$OUT"
CL=$(mktemp -d /tmp/medallion-regress-XXXX)
URL=$(scripts/pg-cluster.sh start "$CL")
trap 'scripts/pg-cluster.sh stop "$CL" >/dev/null 2>&1 || true; rm -rf "$CL"' EXIT
PORT=$(echo "$URL" | sed -E 's|.*:([0-9]+)/.*|\1|')
status=0
"$PG_REGRESS" --host=127.0.0.1 --port="$PORT" --user=postgres --dbname=medallion_regress \
  --inputdir="$SRC" --outputdir="$OUT" setup $TESTS || status=$?
if [ "${1:-}" = "--accept" ]; then
  cp "$OUT"/results/*.out "$SRC/expected/"
  echo "regress: promoted results to $SRC/expected/ — review with git diff"
  exit 0
fi
[ $status -eq 0 ] || { cat "$OUT/regression.diffs" 2>/dev/null | head -200; exit $status; }
