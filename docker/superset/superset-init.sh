#!/bin/sh
# The compose stack's one-shot `superset-init` service (profile superset):
# Superset's metadata database, its admin user, and a database connection
# "medallion gold" to Postgres as the read-only role MEDALLION_BI_USER, which
# may read every schema the sidecar publishes gold into (odoo_gold, …; see
# docker/postgres/10-medallion.sh). Safe to run again.
set -eu
: "${SUPERSET_SECRET_KEY:?set SUPERSET_SECRET_KEY in docker/.env (openssl rand -base64 42)}"
: "${SUPERSET_ADMIN_PASSWORD:?set SUPERSET_ADMIN_PASSWORD in docker/.env}"
: "${MEDALLION_BI_PASSWORD:?set MEDALLION_BI_PASSWORD in docker/.env (URL-safe)}"
superset db upgrade
superset fab create-admin --username "${SUPERSET_ADMIN_USER:-admin}" \
  --password "$SUPERSET_ADMIN_PASSWORD" --firstname Superset --lastname Admin \
  --email admin@localhost || true
superset init
superset set-database-uri --database_name "medallion gold" \
  --uri "postgresql+psycopg2://${MEDALLION_BI_USER:-bi}:${MEDALLION_BI_PASSWORD}@postgres:5432/${POSTGRES_DB:-odoo}"
echo "superset-init: done; log in at http://127.0.0.1:\${SUPERSET_PORT:-8088} as ${SUPERSET_ADMIN_USER:-admin}"
