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
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'medallion_auditor') THEN
        CREATE ROLE medallion_auditor NOLOGIN;
    END IF;
    -- The identity the audit capture trigger appends records as: no login,
    -- no superuser, no membership, INSERT on the log and nothing else.
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'medallion_audit_writer') THEN
        CREATE ROLE medallion_audit_writer NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT
            NOREPLICATION NOBYPASSRLS;
    END IF;
END
$roles$;

GRANT USAGE ON SCHEMA medallion TO medallion_admin, medallion_reader, medallion_auditor;

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
    -- Who declared it: a table that appears later is replicated only if
    -- this role may SELECT it.
    declared_by regrole NOT NULL,
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
    -- Columns identifying a published row: a unique index on them, and
    -- publication by difference (NULL: the model's or table's own keys).
    keys text[] CHECK (keys IS NULL OR pg_catalog.cardinality(keys) > 0),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE (target_schema, target_table)
);
COMMENT ON TABLE medallion.publications IS 'Silver/gold tables the sidecar replaces atomically in Postgres after each refresh. Managed by medallion.publish/unpublish.';

-- Installed packages (medallion.install_package): which version, with which
-- options, the gold models it defined and the sources it added.
CREATE TABLE medallion.packages (
    name text PRIMARY KEY,
    version text NOT NULL,
    options jsonb NOT NULL DEFAULT '{}',
    models text[] NOT NULL DEFAULT '{}',
    sources text[] NOT NULL DEFAULT '{}',
    skipped text[] NOT NULL DEFAULT '{}',
    installed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE medallion.packages IS 'Packages installed with medallion.install_package: models it defines, sources it added (public tables), models skipped because their tables are missing.';

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
    -- A silver table or gold model the refiner's last cycles proved up to
    -- date at their watermark: its position and time are the refiner's
    -- (medallion.refiner_position), so a quiet row is not rewritten every
    -- cycle. medallion.status() shows the later of the two.
    follows_refiner boolean NOT NULL DEFAULT false,
    PRIMARY KEY (slot_name, layer, name)
);

-- Written by the sidecar: the watermark of the refiner's last cycle, one row
-- per slot. Rows of medallion.table_status that follow the refiner are at it.
CREATE TABLE medallion.refiner_position (
    slot_name text PRIMARY KEY,
    watermark pg_lsn NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
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
-- The sidecar deletes rows older than runs_retention_days, oldest first.
CREATE INDEX ON medallion.runs (started_at);


-- Audit: a tamper-evident row-change trail (see docs/sql-api.md "Audit").
-- Tables with an audit trigger (medallion.enable_audit / disable_audit).
CREATE TABLE medallion.audit_tables (
    table_name text COLLATE "C" PRIMARY KEY,
    columns text[],
    exclude_columns text[],
    enabled_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    disabled_at timestamptz,
    -- Last known state of the capture triggers (kept by the event trigger
    -- medallion_audit_capture; a change is recorded in audit_gaps).
    capture_intact boolean NOT NULL DEFAULT true
);
COMMENT ON TABLE medallion.audit_tables IS 'Audited tables. table_name is the quoted schema-qualified name; the trail is complete from enabled_at (until disabled_at).';

-- One record per row change (and per TRUNCATE). Append-only: only
-- medallion.audit_retention() removes records; nothing updates them.
CREATE TABLE medallion.audit_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name text COLLATE "C" NOT NULL,
    -- INSERT, UPDATE, DELETE or TRUNCATE. Written only by the capture
    -- trigger (no CHECK constraint: it would be re-parsed on every insert).
    op text NOT NULL,
    pk jsonb,
    -- Lookup key of the row: medallion._row_key(table_name, pk).
    row_key bigint,
    old jsonb,
    new jsonb,
    xid xid8 NOT NULL,
    at timestamptz NOT NULL,
    db_role name NOT NULL,
    app_user text,
    application_name text,
    client_addr inet
);
COMMENT ON TABLE medallion.audit_log IS 'Row-change trail of audited tables. INSERT: new = the row; UPDATE: old/new = changed columns only; DELETE: old = the row; TRUNCATE: one record per statement. at = statement start.';
COMMENT ON COLUMN medallion.audit_log.app_user IS 'GUC medallion.app_user, else Supabase JWT sub (request.jwt.claims), else the row''s Odoo write_uid (on DELETE: the last writer, not the deleter)';
CREATE INDEX audit_log_row ON medallion.audit_log (row_key);
CREATE INDEX audit_log_at ON medallion.audit_log USING brin (at);

-- The row lookup key: a hash of the table and the key, or of the table alone
-- for TRUNCATE records (Postgres' own jsonb
-- and text hash functions, stable across versions as hash partitioning
-- relies on them). Not part of the hashed canonical form; verify_audit
-- checks it.
CREATE FUNCTION medallion._row_key(t text, pk jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT COALESCE(pg_catalog.jsonb_hash_extended(pk, pg_catalog.hashtextextended(t, 0)),
                      pg_catalog.hashtextextended(t, 1)) $$;

-- The hash chain: one seal per record, in chain order per table.
-- hash = sha256(previous hash || medallion.audit_canonical(record)).
CREATE TABLE medallion.audit_seal (
    table_name text COLLATE "C" NOT NULL,
    seq bigint NOT NULL CHECK (seq > 0),
    record_id bigint NOT NULL UNIQUE,
    hash bytea NOT NULL,
    version smallint NOT NULL DEFAULT 1,
    PRIMARY KEY (table_name, seq)
);
COMMENT ON TABLE medallion.audit_seal IS 'Hash chain over medallion.audit_log per table, written by medallion.seal_audit(). Append-only.';

-- Head of each chain (the last seal), and where retention cut it.
CREATE TABLE medallion.audit_chain (
    table_name text COLLATE "C" PRIMARY KEY,
    seq bigint NOT NULL,
    hash bytea NOT NULL,
    sealed_at timestamptz NOT NULL
);

-- Signed-off checkpoints: retention removed seals 1..seq; hash is the chain
-- hash at seq, so verification continues from it.
CREATE TABLE medallion.audit_checkpoints (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    hash bytea NOT NULL,
    removed bigint NOT NULL,
    removed_before timestamptz NOT NULL,
    signed_off_by name NOT NULL,
    signed_off_at timestamptz NOT NULL,
    checkpoint_hash bytea NOT NULL,
    UNIQUE (table_name, seq)
);

-- Stretches in which a trail was not captured: the table's owner disabled,
-- dropped or altered a capture trigger, and when capture was restored.
-- Append-only (guard trigger); verify_audit reports them as GAP.
CREATE TABLE medallion.audit_gaps (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name text COLLATE "C" NOT NULL,
    at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    event text NOT NULL CHECK (event IN ('capture stopped', 'capture restored')),
    detail text NOT NULL,
    by_role name NOT NULL DEFAULT session_user
);

-- Audit settings only a superuser changes: no role is granted write access
-- (the extension owner is a superuser). No row means the defaults.
CREATE TABLE medallion.audit_settings (
    singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
    -- audit_retention never removes records younger than this.
    min_retention interval NOT NULL CHECK (min_retention >= interval '0')
);

-- Sealer progress: every record with id <= low_water is sealed (or never
-- committed). pending_high is the next low water, valid once every
-- transaction in pending_xids (those that held an xid when pending_high was
-- read) has ended. Not dumped: after a restore it starts again from 0, which
-- only makes the first seal scan longer.
CREATE TABLE medallion.audit_sealer (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    low_water bigint NOT NULL DEFAULT 0,
    pending_high bigint,
    pending_xids xid[]
);
INSERT INTO medallion.audit_sealer DEFAULT VALUES;

-- Definitions survive pg_dump/pg_restore; runtime status does not need to.
SELECT pg_catalog.pg_extension_config_dump('medallion.sources', '');
SELECT pg_catalog.pg_extension_config_dump('medallion.schema_sources', '');
SELECT pg_catalog.pg_extension_config_dump('medallion.silver_tables', '');
SELECT pg_catalog.pg_extension_config_dump('medallion.gold_models', '');
SELECT pg_catalog.pg_extension_config_dump('medallion.expectations', '');
SELECT pg_catalog.pg_extension_config_dump('medallion.dependencies', '');
SELECT pg_catalog.pg_extension_config_dump('medallion.publications', '');
-- The audit trail is data, not configuration: it must survive a dump.
SELECT pg_catalog.pg_extension_config_dump('medallion.audit_tables', '');
SELECT pg_catalog.pg_extension_config_dump('medallion.audit_settings', '');
SELECT pg_catalog.pg_extension_config_dump('medallion.audit_gaps', '');
SELECT pg_catalog.pg_extension_config_dump('medallion.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('medallion.audit_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('medallion.audit_seal', '');
SELECT pg_catalog.pg_extension_config_dump('medallion.audit_chain', '');
SELECT pg_catalog.pg_extension_config_dump('medallion.audit_checkpoints', '');
SELECT pg_catalog.pg_extension_config_dump('medallion.audit_checkpoints_id_seq', '');

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
    SELECT t.slot_name, t.layer, t.name, t.state,
           -- A row that follows the refiner is at its last cycle's watermark.
           CASE WHEN t.follows_refiner THEN GREATEST(t.last_lsn, r.watermark) ELSE t.last_lsn END,
           t.last_commit_at, t.delta_version, t.rows_total,
           -- Every bronze table holds everything before the slot's confirmed
           -- position, so its lag is the slot's distance to the WAL end.
           CASE WHEN t.layer = 'bronze' AND s.slot_name IS NOT NULL
                THEN GREATEST(pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn), 0)::bigint
                ELSE t.lag_bytes END,
           t.lag_seconds, s.active, s.wal_status,
           pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint,
           pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint,
           t.last_error,
           CASE WHEN t.follows_refiner THEN GREATEST(t.updated_at, r.updated_at) ELSE t.updated_at END
      FROM medallion.table_status t
      LEFT JOIN medallion.refiner_position r ON r.slot_name = t.slot_name
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
GRANT INSERT, UPDATE, DELETE ON medallion.table_status, medallion.refiner_position, medallion.runs TO medallion_admin;
-- The audit trail is for auditors (and admins), not for every reader.
REVOKE ALL ON medallion.audit_tables, medallion.audit_log, medallion.audit_seal, medallion.audit_chain,
    medallion.audit_checkpoints, medallion.audit_sealer, medallion.audit_gaps FROM medallion_reader;
GRANT SELECT ON medallion.audit_tables, medallion.audit_log, medallion.audit_seal, medallion.audit_chain,
    medallion.audit_checkpoints, medallion.audit_sealer, medallion.audit_gaps TO medallion_auditor;
-- The capture trigger appends as medallion_audit_writer: it may add records
-- and do nothing else (no SELECT, UPDATE, DELETE, no other table).
GRANT USAGE ON SCHEMA medallion TO medallion_audit_writer;
GRANT INSERT ON medallion.audit_log TO medallion_audit_writer;
GRANT USAGE ON SEQUENCE medallion.audit_log_id_seq TO medallion_audit_writer;
GRANT EXECUTE ON FUNCTION medallion._row_key(text, jsonb) TO medallion_audit_writer;
REVOKE ALL ON FUNCTION medallion.status(), medallion.slots() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION medallion.status(), medallion.slots(), medallion.default_excludes()
    TO medallion_reader, medallion_admin;
