-- pg_medallion catalog: what the sidecar executes. Runs before the generated
-- function definitions (pgrx `bootstrap`). Everything schema-qualified.

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'medallion_admin') THEN
        CREATE ROLE medallion_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'medallion_reader') THEN
        CREATE ROLE medallion_reader NOLOGIN;
    END IF;
END
$roles$;

GRANT USAGE ON SCHEMA medallion TO medallion_admin, medallion_reader;

-- Sources: tables streamed to bronze.
CREATE TABLE medallion.sources (
    source_schema name NOT NULL,
    source_table name NOT NULL,
    columns text[],
    row_filter text,
    silver text NOT NULL DEFAULT 'current' CHECK (silver IN ('none', 'current', 'scd2')),
    schema_source name,
    resync_requested_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (source_schema, source_table)
);
COMMENT ON TABLE medallion.sources IS 'Tables streamed to bronze (<lake>/bronze/<schema>/<table>). Managed by medallion.add_source/add_sources/drop_source.';

-- Whole-schema sources: new matching tables are added by an event trigger.
CREATE TABLE medallion.schema_sources (
    schema_name name PRIMARY KEY,
    include text NOT NULL DEFAULT '%',
    exclude text[] NOT NULL,
    silver text NOT NULL DEFAULT 'current' CHECK (silver IN ('none', 'current', 'scd2')),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

CREATE TABLE medallion.silver_tables (
    name text PRIMARY KEY CHECK (name ~ '^[a-z_][a-z0-9_]{0,62}$'),
    source_schema name NOT NULL,
    source_table name NOT NULL,
    keys text[] NOT NULL CHECK (pg_catalog.cardinality(keys) > 0),
    history text NOT NULL DEFAULT 'none' CHECK (history IN ('none', 'scd2')),
    track_columns text[],
    soft_delete boolean NOT NULL DEFAULT false,
    managed boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    FOREIGN KEY (source_schema, source_table) REFERENCES medallion.sources
);
COMMENT ON COLUMN medallion.silver_tables.managed IS 'true when created by a source''s silver option (kept in step with the source)';

CREATE TABLE medallion.gold_models (
    name text PRIMARY KEY CHECK (name ~ '^[a-z_][a-z0-9_]{0,62}$'),
    query text NOT NULL,
    refresh text NOT NULL DEFAULT 'on_change' CHECK (refresh IN ('on_change', 'manual', 'interval')),
    refresh_interval interval CHECK ((refresh = 'interval') = (refresh_interval IS NOT NULL)),
    keys text[],
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

CREATE TABLE medallion.expectations (
    target text NOT NULL,
    name text NOT NULL CHECK (name ~ '^[a-z_][a-z0-9_]{0,62}$'),
    predicate text NOT NULL,
    on_violation text NOT NULL DEFAULT 'warn' CHECK (on_violation IN ('warn', 'drop', 'fail')),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (target, name)
);
COMMENT ON COLUMN medallion.expectations.target IS 'silver.<name> or gold.<name>';

-- Silver tables and gold models copied into Postgres after each refresh.
CREATE TABLE medallion.publications (
    node text PRIMARY KEY CHECK (node ~ '^(silver|gold)\.'),
    target_schema name NOT NULL DEFAULT 'medallion_gold',
    target_table name NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE (target_schema, target_table)
);
COMMENT ON TABLE medallion.publications IS 'Silver/gold tables the sidecar replaces atomically in Postgres after each refresh. Managed by medallion.publish/unpublish.';

-- Lineage edges: downstream reads upstream.
-- Node names: bronze.<schema>.<table>, silver.<name>, gold.<name>.
CREATE TABLE medallion.dependencies (
    downstream text NOT NULL,
    upstream text NOT NULL,
    PRIMARY KEY (downstream, upstream)
);
CREATE INDEX ON medallion.dependencies (upstream);

-- Written by the sidecar.
CREATE TABLE medallion.table_status (
    slot_name text NOT NULL,
    layer text NOT NULL CHECK (layer IN ('bronze', 'silver', 'gold')),
    name text NOT NULL,
    state text NOT NULL DEFAULT 'pending',
    last_lsn pg_lsn,
    last_commit_at timestamptz,
    delta_version bigint,
    rows_total bigint NOT NULL DEFAULT 0,
    lag_bytes bigint,
    lag_seconds double precision,
    last_error text,
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (slot_name, layer, name)
);

CREATE TABLE medallion.runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slot_name text NOT NULL,
    layer text NOT NULL,
    name text NOT NULL,
    started_at timestamptz NOT NULL,
    finished_at timestamptz,
    rows_in bigint,
    rows_out bigint,
    expectations jsonb,
    watermark pg_lsn,
    status text NOT NULL CHECK (status IN ('running', 'ok', 'failed')),
    error text
);
CREATE INDEX ON medallion.runs (layer, name, started_at DESC);

-- Definitions survive pg_dump/pg_restore; runtime status does not need to.
SELECT pg_catalog.pg_extension_config_dump('medallion.sources', '');
SELECT pg_catalog.pg_extension_config_dump('medallion.schema_sources', '');
SELECT pg_catalog.pg_extension_config_dump('medallion.silver_tables', '');
SELECT pg_catalog.pg_extension_config_dump('medallion.gold_models', '');
SELECT pg_catalog.pg_extension_config_dump('medallion.expectations', '');
SELECT pg_catalog.pg_extension_config_dump('medallion.dependencies', '');
SELECT pg_catalog.pg_extension_config_dump('medallion.publications', '');

-- Odoo's noise tables, excluded by default from add_sources (see docs/sql-api.md).
CREATE FUNCTION medallion.default_excludes() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT ARRAY[
    'bus\_bus', 'bus\_presence', 'ir\_cron%', 'ir\_attachment', 'ir\_logging',
    'ir\_sessions', 'mail\_mail', 'base\_import\_%', 'base\_module\_%', '%\_wizard',
    '%\_wizard\_%', 'res\_config\_settings', 'web\_tour\_%', 'iap\_%',
    'medallion\_%'
]::text[] $$;

-- Human-readable views.
CREATE VIEW medallion.pipeline AS
    SELECT 'bronze'::text AS layer,
           pg_catalog.format('%s.%s', s.source_schema, s.source_table) AS name,
           pg_catalog.format('%I.%I', s.source_schema, s.source_table) AS source,
           pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
               'columns', s.columns, 'row_filter', s.row_filter, 'silver', s.silver,
               'schema_source', s.schema_source)) AS definition,
           s.updated_at
      FROM medallion.sources s
    UNION ALL
    SELECT 'silver', t.name, pg_catalog.format('%I.%I', t.source_schema, t.source_table),
           pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
               'keys', t.keys, 'history', t.history, 'track_columns', t.track_columns,
               'soft_delete', t.soft_delete, 'managed', t.managed,
               'expectations', (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                   'name', e.name, 'predicate', e.predicate, 'on_violation', e.on_violation) ORDER BY e.name)
                   FROM medallion.expectations e WHERE e.target = 'silver.' || t.name))),
           t.updated_at
      FROM medallion.silver_tables t
    UNION ALL
    SELECT 'gold', g.name, NULL,
           pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
               'query', g.query, 'refresh', g.refresh, 'refresh_interval', g.refresh_interval::text,
               'keys', g.keys,
               'expectations', (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                   'name', e.name, 'predicate', e.predicate, 'on_violation', e.on_violation) ORDER BY e.name)
                   FROM medallion.expectations e WHERE e.target = 'gold.' || g.name))),
           g.updated_at
      FROM medallion.gold_models g;

CREATE VIEW medallion.lineage AS
    SELECT pg_catalog.split_part(d.upstream, '.', 1) AS upstream_layer,
           pg_catalog.substr(d.upstream, pg_catalog.strpos(d.upstream, '.') + 1) AS upstream_name,
           pg_catalog.split_part(d.downstream, '.', 1) AS downstream_layer,
           pg_catalog.substr(d.downstream, pg_catalog.strpos(d.downstream, '.') + 1) AS downstream_name
      FROM medallion.dependencies d;

-- Status: what the sidecar wrote, joined with the live slot.
CREATE FUNCTION medallion.status()
RETURNS TABLE (
    slot_name text, layer text, name text, state text, last_lsn pg_lsn,
    last_commit_at timestamptz, delta_version bigint, rows_total bigint,
    lag_bytes bigint, lag_seconds double precision, slot_active boolean,
    slot_wal_status text, retained_wal_bytes bigint, slot_lag_bytes bigint,
    last_error text, updated_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.slot_name, t.layer, t.name, t.state, t.last_lsn, t.last_commit_at,
           t.delta_version, t.rows_total,
           -- Every bronze table holds everything before the slot's confirmed
           -- position, so its lag is the slot's distance to the WAL end.
           CASE WHEN t.layer = 'bronze' AND s.slot_name IS NOT NULL
                THEN GREATEST(pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn), 0)::bigint
                ELSE t.lag_bytes END,
           t.lag_seconds, s.active, s.wal_status,
           pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint,
           pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint,
           t.last_error, t.updated_at
      FROM medallion.table_status t
      LEFT JOIN pg_replication_slots s ON s.slot_name = t.slot_name
     ORDER BY t.slot_name, CASE t.layer WHEN 'bronze' THEN 1 WHEN 'silver' THEN 2 ELSE 3 END, t.name
$$;

-- Slots: the WAL each medallion slot retains, always visible.
CREATE FUNCTION medallion.slots()
RETURNS TABLE (slot_name text, active boolean, wal_status text, restart_lsn pg_lsn,
               confirmed_flush_lsn pg_lsn, retained_wal_bytes bigint, lag_bytes bigint,
               safe_wal_size bigint)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.slot_name::text, s.active, s.wal_status, s.restart_lsn, s.confirmed_flush_lsn,
           pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint,
           pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint,
           s.safe_wal_size
      FROM pg_replication_slots s
     WHERE s.plugin = 'pgoutput' AND s.database = current_database()
       AND (s.slot_name LIKE 'medallion%' OR EXISTS (
            SELECT 1 FROM medallion.table_status t WHERE t.slot_name = s.slot_name))
$$;

REVOKE ALL ON ALL TABLES IN SCHEMA medallion FROM PUBLIC;
GRANT SELECT ON ALL TABLES IN SCHEMA medallion TO medallion_reader, medallion_admin;
GRANT INSERT, UPDATE, DELETE ON medallion.table_status, medallion.runs TO medallion_admin;
REVOKE ALL ON FUNCTION medallion.status(), medallion.slots() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION medallion.status(), medallion.slots(), medallion.default_excludes()
    TO medallion_reader, medallion_admin;
