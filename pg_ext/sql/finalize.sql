-- Runs after the generated function definitions (pgrx `finalize`).

-- New tables in a whole-schema source become sources as they appear (Odoo
-- module installs create tables at any time). Never fails the user's DDL.
CREATE FUNCTION medallion._on_ddl_command_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM medallion.schema_sources) THEN
        RETURN;
    END IF;
    FOR r IN SELECT objid, object_identity FROM pg_event_trigger_ddl_commands()
             WHERE object_type = 'table' AND command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE')
    LOOP
        BEGIN
            PERFORM medallion._on_table_ddl(r.objid);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'medallion: could not add new table % as a source: %', r.object_identity, SQLERRM
                USING HINT = 'Add it by hand with SELECT medallion.add_source(...).';
        END;
    END LOOP;
END
$$;

CREATE EVENT TRIGGER medallion_new_tables ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE')
    EXECUTE FUNCTION medallion._on_ddl_command_end();

-- Pinned settings, in one pass over the schema's functions:
-- * every trigger and event-trigger function resolves names and operators in
--   pg_catalog only: a writer's (or a role's, or the database's) search_path
--   never decides which operator a trigger's lookup calls;
-- * every SECURITY DEFINER function, and every function that pins its
--   search_path (the triggers, and the API functions that check the caller,
--   then act as the extension owner), tokenizes SQL text one way whatever the
--   caller set: with standard_conforming_strings off, a backslash would
--   escape a quote and text checked as one expression could end a statement.
--   The row triggers written in Rust (audit_capture, audit_guard), which are
--   not definer functions and run only fixed SQL texts without a backslash,
--   pin search_path alone: every pinned setting is saved and restored once
--   per audited row.
DO $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT p.oid::regprocedure AS fn,
                    p.prorettype IN ('pg_catalog.trigger'::pg_catalog.regtype,
                                     'pg_catalog.event_trigger'::pg_catalog.regtype)
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(p.proconfig) c
                                    WHERE c LIKE 'search_path=%') AS unpinned_trigger
               FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'medallion'::regnamespace
    LOOP
        IF f.unpinned_trigger THEN
            EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', f.fn);
        END IF;
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
                    WHERE p.oid = f.fn AND (p.prosecdef OR p.proconfig IS NOT NULL)
                      AND NOT (p.prolang = (SELECT l.oid FROM pg_catalog.pg_language l WHERE l.lanname = 'c')
                               AND p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype
                               AND NOT p.prosecdef)) THEN
            EXECUTE pg_catalog.format('ALTER FUNCTION %s SET standard_conforming_strings = on', f.fn);
        END IF;
    END LOOP;
END
$$;

-- Privileges: the API is for medallion_admin; nothing is executable by PUBLIC.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA medallion FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    medallion.add_source(regclass, text[], text, text),
    medallion.add_sources(text, text, text[], text),
    medallion.drop_source(regclass, boolean),
    medallion.drop_sources(text, boolean),
    medallion.resync(regclass),
    medallion.sync_publication(),
    medallion.define_silver(text, regclass, text[], text, text[], boolean),
    medallion.drop_silver(text, boolean),
    medallion.expect(text, text, text, text),
    medallion.drop_expectation(text, text),
    medallion.define_gold(text, text, text, text[]),
    medallion.drop_gold(text, boolean),
    medallion.refresh(text),
    medallion.publish(text, text, text, text[]),
    medallion.unpublish(text),
    medallion.lineage_mermaid(),
    medallion.enable_audit(regclass, text[], text[]),
    medallion.disable_audit(regclass),
    medallion.audit_retention(interval),
    medallion.install_package(text, jsonb),
    medallion.upgrade_package(text),
    medallion.uninstall_package(text, boolean),
    medallion.package_files(text)
TO medallion_admin;
-- Audit: auditors (and admins) read, seal and verify the trail.
GRANT EXECUTE ON FUNCTION
    medallion.verify_audit(regclass, timestamptz),
    medallion.seal_audit(integer),
    medallion.audit_history(regclass, jsonb),
    medallion.row_as_of(regclass, jsonb, timestamptz),
    medallion.audit_diff(regclass, jsonb, timestamptz, timestamptz),
    medallion.audit_canonical(medallion.audit_log),
    medallion._canon(text),
    medallion._canonical_v1(text[]),
    medallion._row_key(text, jsonb),
    medallion._genesis()
TO medallion_auditor, medallion_admin;
GRANT EXECUTE ON FUNCTION
    medallion._require_select(regclass),
    medallion._audited(regclass),
    medallion._audit_name(regclass),
    medallion._key_columns(regclass),
    medallion._audit_key(regclass, jsonb),
    medallion._row_records(text, jsonb),
    medallion._live_row(regclass, jsonb, medallion.audit_tables)
TO medallion_auditor, medallion_admin;
-- Auditors read the whole trail (it holds the audited columns an admin who
-- may read the table chose); live rows only with their own SELECT.
GRANT SELECT ON medallion.audit_trail TO medallion_auditor, medallion_admin;
GRANT EXECUTE ON FUNCTION medallion.status(), medallion.slots(), medallion.default_excludes(),
    medallion.lineage_mermaid(), medallion.package_files(text)
TO medallion_reader;
