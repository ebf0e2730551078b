#!/usr/bin/env bash
# Runs once, when the data directory is created (official entry point
# contract): pg_medallion in POSTGRES_DB, and the sidecar's login role
# MEDALLION_USER (default medallion) with password MEDALLION_PASSWORD —
# REPLICATION, medallion_admin, SELECT on the tables of schema public (now
# and those POSTGRES_USER creates later), and CREATE on the database for the
# schemas gold models are published into. Not superuser. Without
# MEDALLION_PASSWORD no role is created (create it yourself, see docs/deploy.md).
# With MEDALLION_BI_PASSWORD also a read-only login role MEDALLION_BI_USER
# (default bi) for dashboards (the superset profile): it may read every
# schema and table the sidecar's role creates (the published gold schemas)
# and, through medallion_reader, the pipeline's status and lineage — and
# nothing of schema public.
set -euo pipefail
psql=(psql -v ON_ERROR_STOP=1 -Xq --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-${POSTGRES_USER:-postgres}}")
"${psql[@]}" -c 'CREATE EXTENSION IF NOT EXISTS pg_medallion'
if [ -z "${MEDALLION_PASSWORD:-}" ]; then
  echo "10-medallion.sh: MEDALLION_PASSWORD is not set; no sidecar role created" >&2
  exit 0
fi
# Values reach SQL only as psql variables quoted by psql (:'v', :"v").
"${psql[@]}" --set role="${MEDALLION_USER:-medallion}" --set pw="$MEDALLION_PASSWORD" \
  --set owner="${POSTGRES_USER:-postgres}" --set db="${POSTGRES_DB:-${POSTGRES_USER:-postgres}}" <<'SQL'
CREATE ROLE :"role" LOGIN REPLICATION PASSWORD :'pw';
GRANT medallion_admin TO :"role";
GRANT CREATE ON DATABASE :"db" TO :"role";
GRANT USAGE ON SCHEMA public TO :"role";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO :"role";
SQL
if [ -n "${MEDALLION_BI_PASSWORD:-}" ]; then
  "${psql[@]}" --set role="${MEDALLION_USER:-medallion}" --set bi="${MEDALLION_BI_USER:-bi}" \
    --set pw="$MEDALLION_BI_PASSWORD" <<'SQL'
CREATE ROLE :"bi" LOGIN PASSWORD :'pw';
GRANT medallion_reader TO :"bi";
ALTER DEFAULT PRIVILEGES FOR ROLE :"role" GRANT USAGE ON SCHEMAS TO :"bi";
ALTER DEFAULT PRIVILEGES FOR ROLE :"role" GRANT SELECT ON TABLES TO :"bi";
SQL
fi
