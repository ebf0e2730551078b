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
BIN=${CARGO_TARGET_DIR:-target}/debug

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
log "the Odoo package: general ledger, trial balance, P&L, balance sheet, aged receivable/payable, invoices (sql/packages/odoo)"
psql "$DB" -Xq -v ON_ERROR_STOP=1 -c "SELECT state, count(*) AS objects, string_agg(object, ', ' ORDER BY object) AS which FROM medallion.install_package('odoo') GROUP BY state"

export MEDALLION_DATABASE_URL="$DB" MEDALLION_LAKE_URL="$DIR/lake" MEDALLION_LOG="warn,pg_walstream=error,deltalake_core::operations::merge=error"
log "initial copy into bronze, then silver and gold (medallion run --until-caught-up)"
"$BIN/medallion" run --until-caught-up

log "a business day of Odoo-like transactions: streamed into bronze, merged into silver, gold refreshed"
"$BIN/odoo-gen" workload --scale "$SCALE" --seed 42 --transactions 400 | psql "$DB" -Xq -v ON_ERROR_STOP=1 >/dev/null
"$BIN/medallion" run --until-caught-up

log "status (medallion status):"
"$BIN/medallion" status
echo
log "lake: $DIR/lake/{bronze,silver,gold}/... (Delta tables; read them with any Delta reader)"
log "profit and loss by month, read back from the Delta table $DIR/lake/gold/odoo_profit_and_loss:"
"$BIN/medallion" query "SELECT company_id AS company, CAST(month AS DATE) AS month, section, CAST(sum(amount) AS DECIMAL(16,2)) AS amount FROM gold.odoo_profit_and_loss GROUP BY company_id, month, section, section_order ORDER BY month DESC, company_id, section_order LIMIT 8"
echo
log "the books balance: assets = liabilities + equity at each month end (gold.odoo_balance_sheet):"
"$BIN/medallion" query "SELECT company_id AS company, CAST(month_end AS DATE) AS month_end, CAST(sum(CASE WHEN section = 'Assets' THEN amount ELSE 0 END) AS DECIMAL(16,2)) AS assets, CAST(sum(CASE WHEN section <> 'Assets' THEN amount ELSE 0 END) AS DECIMAL(16,2)) AS liabilities_and_equity FROM gold.odoo_balance_sheet GROUP BY company_id, month_end ORDER BY month_end DESC, company_id LIMIT 4"
echo
log "aged receivable, published into Postgres (odoo_gold.aged_receivable):"
psql "$DB" -X -c "SELECT company_id AS company, partner_name, sum(residual)::numeric(16,2) AS due, sum(not_due)::numeric(16,2) AS not_due, sum(days_1_30)::numeric(16,2) AS \"1-30\", sum(days_31_60)::numeric(16,2) AS \"31-60\", sum(days_61_90 + days_91_120 + older)::numeric(16,2) AS \"61+\" FROM odoo_gold.aged_receivable GROUP BY company_id, partner_name ORDER BY due DESC LIMIT 10"
