#!/usr/bin/env bash
# The compose stack's one-shot `seed` service: Odoo-shaped demo data
# (docker/seed/odoo-demo.sql.gz, made by `odoo-gen base --scale 1 --seed 42`)
# and the pipeline — every table of schema public as a source with
# current-state silver, and the Odoo package's gold reports published into
# schema odoo_gold. It does nothing on a database that already has an
# account_move table (a real Odoo database): declare your pipeline there
# yourself (docs/deploy.md).
set -euo pipefail
until pg_isready -q; do sleep 1; done
if [ "$(psql -XAtq -c "SELECT to_regclass('public.account_move') IS NOT NULL")" = t ]; then
  echo "seed: public.account_move exists; nothing to do"
  exit 0
fi
echo "seed: loading the demo data"
gunzip -c /seed/odoo-demo.sql.gz | psql -v ON_ERROR_STOP=1 -Xq >/dev/null
echo "seed: declaring sources and installing the Odoo package"
psql -v ON_ERROR_STOP=1 -Xq <<'SQL'
SELECT medallion.add_sources('public') AS sources;
SELECT state, count(*) FROM medallion.install_package('odoo') GROUP BY state;
SQL
echo "seed: done"
