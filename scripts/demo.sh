#!/usr/bin/env bash
# The main job on the embedded default: a private Postgres 15 with Odoo-shaped
# demo data, the medallion sidecar replicating it into a local-directory lake.
# Usage: scripts/demo.sh DIR SCALE   (make demo)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.medallion/demo}
SCALE=${2:-1}
log() { printf '\033[1;32m[demo]\033[0m %s\n' "$*" >&2; }

# Start from a clean demo every time (idempotent).
scripts/pg-cluster.sh stop "$DIR/pg" >/dev/null 2>&1 || true
rm -rf "$DIR"; mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

log "building the sidecar and the demo data generator"
cargo build -q -p medallion -p medallion-tests --bins
BIN=target/debug

log "starting a private Postgres 15 (wal_level = logical) in $DIR/pg"
URL=$(scripts/pg-cluster.sh start "$DIR/pg")
trap 'scripts/pg-cluster.sh stop "$DIR/pg" >/dev/null 2>&1 || true' EXIT
DB=${URL%/postgres}/odoo_demo
psql "$URL" -Xq -v ON_ERROR_STOP=1 -c "CREATE DATABASE odoo_demo TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C.UTF-8'"
psql "$DB" -Xq -v ON_ERROR_STOP=1 -c "CREATE EXTENSION pg_medallion"

log "loading Odoo-shaped demo data (scale $SCALE)"
"$BIN/odoo-gen" base --scale "$SCALE" --seed 42 | psql "$DB" -Xq -v ON_ERROR_STOP=1 >/dev/null

log "declaring the pipeline: every table of schema public (bronze + current-state silver), one call"
psql "$DB" -Xq -v ON_ERROR_STOP=1 -c "SELECT medallion.add_sources('public') AS sources"
log "gold models, an expectation and a publication (sql/examples/odoo_gold.sql)"
psql "$DB" -Xq -v ON_ERROR_STOP=1 -f sql/examples/odoo_gold.sql >/dev/null

export MEDALLION_DATABASE_URL="$DB" MEDALLION_LAKE_URL="$DIR/lake" MEDALLION_LOG="warn,pg_walstream=error"
log "initial copy into bronze, then silver and gold (medallion run --until-caught-up)"
"$BIN/medallion" run --until-caught-up

log "a business day of Odoo-like transactions: streamed into bronze, merged into silver, gold refreshed"
"$BIN/odoo-gen" workload --scale "$SCALE" --seed 42 --transactions 400 | psql "$DB" -Xq -v ON_ERROR_STOP=1 >/dev/null
"$BIN/medallion" run --until-caught-up

log "status (medallion status):"
"$BIN/medallion" status
echo
log "lake: $DIR/lake/{bronze,silver,gold}/... (Delta tables; read them with any Delta reader)"
log "gold rows, read back from the Delta table $DIR/lake/gold/monthly_revenue:"
"$BIN/medallion" query "SELECT customer, CAST(month AS DATE) AS month, CAST(revenue AS DECIMAL(16,2)) AS revenue, invoices FROM gold.monthly_revenue ORDER BY revenue DESC LIMIT 10"
echo
log "account balances (Odoo's jsonb account names and codes), from gold.account_balances:"
"$BIN/medallion" query "SELECT month, code, account, CAST(net_change AS DECIMAL(16,2)) AS net_change, CAST(closing_balance AS DECIMAL(16,2)) AS closing_balance FROM gold.account_balances ORDER BY month DESC, code LIMIT 8"
echo
log "open receivables, published into Postgres (medallion_gold.open_receivables):"
psql "$DB" -X -c "SELECT customer, open_amount::numeric(16,2), open_items, oldest_due FROM medallion_gold.open_receivables ORDER BY open_amount DESC LIMIT 10"
