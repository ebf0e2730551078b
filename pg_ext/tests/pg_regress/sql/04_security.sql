-- The trust boundary, attacked: user text never becomes SQL text in the
-- extension owner's context, and no API function can be made to tokenize
-- differently from how its text was checked.
\c - medallion_test_admin

-- Every SECURITY DEFINER function, and every invoker function that checks
-- its caller and then acts as the extension owner (add_source, add_sources,
-- enable_audit), pins search_path and standard_conforming_strings.
SELECT count(*) > 20 AS definer_functions FROM pg_proc
 WHERE pronamespace = 'medallion'::regnamespace AND prosecdef;
SELECT p.oid::regprocedure AS unpinned FROM pg_proc p
 WHERE p.pronamespace = 'medallion'::regnamespace
   AND (p.prosecdef OR p.proname IN ('add_source', 'add_sources', 'enable_audit', 'row_as_of',
                                     'audit_history', 'audit_diff', 'install_package',
                                     'upgrade_package', 'uninstall_package'))
   AND NOT (coalesce(p.proconfig, '{}') @> ARRAY['standard_conforming_strings=on']
            AND EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%'));
-- Those read their caller: they are not definer functions.
SELECT p.proname, p.prosecdef FROM pg_proc p
 WHERE p.pronamespace = 'medallion'::regnamespace
   AND p.proname IN ('add_source', 'add_sources', 'enable_audit', 'row_as_of', 'audit_history', 'audit_diff',
                     'install_package', 'upgrade_package', 'uninstall_package')
 ORDER BY 1;
-- Nothing in the schema is executable by PUBLIC.
SELECT p.oid::regprocedure AS public_function FROM pg_proc p
 WHERE p.pronamespace = 'medallion'::regnamespace AND has_function_privilege('public', p.oid, 'EXECUTE');

-- Every trigger and event-trigger function resolves names and operators in
-- pg_catalog only, whatever search_path its caller runs with.
SELECT p.oid::regprocedure AS unpinned_trigger_function FROM pg_proc p
 WHERE p.pronamespace = 'medallion'::regnamespace
   AND p.prorettype IN ('trigger'::regtype, 'event_trigger'::regtype)
   AND NOT coalesce(p.proconfig, '{}') @> ARRAY['search_path=pg_catalog, pg_temp'];
SELECT count(*) > 2 AS trigger_functions FROM pg_proc
 WHERE pronamespace = 'medallion'::regnamespace AND prorettype IN ('trigger'::regtype, 'event_trigger'::regtype);
-- The Rust row triggers (invoker, fixed SQL texts only) pin exactly that:
-- one setting saved and restored per audited row.
SELECT p.proname, p.prosecdef, p.proconfig FROM pg_proc p
 WHERE p.pronamespace = 'medallion'::regnamespace AND p.proname IN ('audit_capture', 'audit_guard')
 ORDER BY 1;

-- The tokenizer attack: under standard_conforming_strings = off a backslash
-- escapes a quote, so this filter would end ALTER PUBLICATION's WHERE clause
-- and run DROP TABLE as the extension owner. Inside add_source the setting
-- is pinned on: Postgres parses it as one harmless expression of two literals.
SET standard_conforming_strings = off;
SELECT err($$SELECT medallion.add_source('public.res_partner',
    row_filter => $q$id > 1 OR 'x\' = ') ; DROP TABLE public.secret; --'$q$)$$);
SELECT tablename, rowfilter FROM pg_publication_tables WHERE pubname = 'medallion' AND tablename = 'res_partner';
RESET standard_conforming_strings;
\c - postgres
SELECT to_regclass('public.secret') IS NOT NULL AS secret_still_there;
\c - medallion_test_admin

-- Text that is not exactly one expression to Postgres is refused (42601).
SELECT err($$SELECT medallion.add_source('public.res_partner', row_filter => 'id > 1) ; DROP TABLE public.secret; --')$$);
SELECT err($$SELECT medallion.add_source('public.res_partner', row_filter => 'true; DROP TABLE public.secret')$$);
SELECT err($$SELECT medallion.add_source('public.res_partner', row_filter => 'id FROM public.secret')$$);
SELECT err($$SELECT medallion.add_source('public.res_partner', row_filter => 'id > 1 --')$$);
-- Postgres nests block comments: all of this after `id = 1` is one comment.
SELECT err($$SELECT medallion.add_source('public.res_partner', row_filter => $q$id = 1 /* /* */ ) ; DROP TABLE public.secret; -- */$q$)$$);
SELECT tablename, rowfilter FROM pg_publication_tables WHERE pubname = 'medallion' AND tablename = 'res_partner';
SELECT err($$SELECT medallion.add_source('public.res_partner', row_filter => $q$id = 1 $x$ ) ; DROP TABLE public.secret; $x$ $q$)$$);
\c - postgres
SELECT to_regclass('public.secret') IS NOT NULL AS secret_still_there;
\c - medallion_test_admin
SELECT tablename, rowfilter FROM pg_publication_tables WHERE pubname = 'medallion' AND tablename = 'res_partner';
-- back to no filter for the tests after this one
SELECT medallion.add_source('public.res_partner');

-- Reading tables one may not read: privileges are checked as the effective
-- caller (current_user), never session_user. A pooler logs in as a role that
-- may read public.secret and SET ROLEs to one that may not: neither a source
-- nor an audit trail of the table is made for it.
\c - postgres
CREATE ROLE medallion_test_pooler LOGIN;
CREATE ROLE medallion_test_tenant NOLOGIN;
GRANT medallion_admin TO medallion_test_tenant;
GRANT medallion_test_tenant TO medallion_test_pooler;
GRANT SELECT ON public.secret TO medallion_test_pooler;
\c - medallion_test_pooler
SET ROLE medallion_test_tenant;
SELECT session_user, current_user;
SELECT err($$SELECT medallion.add_source('public.secret')$$);
SELECT err($$SELECT medallion.enable_audit('public.secret')$$);
RESET ROLE;
\c - medallion_test_admin
SELECT err($$SELECT medallion.add_source('public.secret')$$);
SELECT err($$SELECT medallion.enable_audit('public.secret')$$);
SELECT count(*) AS secret_sources FROM medallion.sources WHERE source_table = 'secret';
SELECT count(*) AS secret_trails FROM medallion.audit_tables WHERE table_name = 'public.secret';

-- An auditor reads the trail, but a table's live rows only with SELECT on
-- it; and building a row of the audited table's type (a domain CHECK on the
-- key) runs as the auditor, never as the extension owner.
\c - postgres
CREATE FUNCTION public.noisy_check(v int) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN RAISE NOTICE 'domain check ran as %', current_user; RETURN v > 0; END $$;
CREATE DOMAIN public.noisy_id AS int CHECK (public.noisy_check(VALUE));
CREATE TABLE public.payslip (id public.noisy_id PRIMARY KEY, salary numeric);
SELECT medallion.enable_audit('public.payslip');
INSERT INTO public.payslip VALUES (1, 9000);
\c - medallion_test_auditor
SELECT err($$SELECT medallion.row_as_of('public.payslip', '{"id": 1}', now())$$);
SELECT err($$SELECT * FROM medallion.audit_history('public.payslip', '{"id": 1}')$$);
SELECT err($$SELECT * FROM medallion.audit_diff('public.payslip', '{"id": 1}', now() - interval '1 day', now())$$);
\c - postgres
GRANT SELECT ON public.payslip TO medallion_test_auditor;
\c - medallion_test_auditor
SELECT medallion.row_as_of('public.payslip', '{"id": 1}', now()) AS payslip_now;

-- The event trigger never reads an application relation that could run
-- someone's code: a schema owner who makes ir_model a view over their own
-- function gets it called by nobody. Tables the schema owner creates later
-- become sources only if the role that declared the schema source may read
-- them.
\c - postgres
CREATE ROLE medallion_test_owner LOGIN;
CREATE SCHEMA odoo_owned AUTHORIZATION medallion_test_owner;
GRANT USAGE ON SCHEMA odoo_owned TO medallion_test_admin;
\c - medallion_test_owner
CREATE FUNCTION odoo_owned.trap() RETURNS bool LANGUAGE plpgsql AS $$
BEGIN RAISE NOTICE 'trap ran as %', current_user; RETURN true; END $$;
CREATE VIEW odoo_owned.ir_model AS SELECT 'res.partner'::varchar AS model, odoo_owned.trap() AS transient;
CREATE TABLE odoo_owned.res_partner (id int PRIMARY KEY, name varchar);
GRANT SELECT ON odoo_owned.res_partner TO medallion_test_admin;
\c - medallion_test_admin
SELECT medallion.add_sources('odoo_owned') AS sources;
\c - medallion_test_owner
CREATE TABLE odoo_owned.hr_salary (id int PRIMARY KEY, amount numeric);
ALTER DEFAULT PRIVILEGES IN SCHEMA odoo_owned GRANT SELECT ON TABLES TO medallion_test_admin;
CREATE TABLE odoo_owned.sale_order (id int PRIMARY KEY);
\c - medallion_test_admin
SELECT source_table, declared_by FROM medallion.sources s JOIN medallion.schema_sources ss
    ON ss.schema_name = s.source_schema WHERE s.source_schema = 'odoo_owned' ORDER BY 1;
SELECT medallion.drop_sources('odoo_owned');

-- Publishing into objects that belong to others: a schema another role
-- prepared (it could hold triggers and rules), or an existing table that is
-- not a medallion publication, is refused; the sidecar checks the same
-- again before it writes (tests/tests/e2e/sidecar_security.rs).
\c - postgres
CREATE SCHEMA squat AUTHORIZATION medallion_test_app;
CREATE SCHEMA reporting;
CREATE TABLE reporting.budget (id int PRIMARY KEY, amount numeric);
\c - medallion_test_admin
SELECT medallion.define_gold('pub_probe', 'SELECT 1 AS x');
SELECT err($$SELECT medallion.publish('pub_probe', target_schema => 'squat')$$);
SELECT err($$SELECT medallion.publish('pub_probe', target_schema => 'reporting', target_table => 'budget')$$);
SELECT medallion.publish('pub_probe', target_schema => 'reporting');
SELECT node, target_schema, target_table FROM medallion.publications WHERE node = 'gold.pub_probe';
SELECT medallion.drop_gold('pub_probe');

-- Bypassing the trail: the table's owner disables the capture trigger,
-- changes a row and enables it again. The event trigger records both
-- moments; verify_audit says GAP (not OK) and names who and when.
\c - postgres
CREATE TABLE public.ledger (id int PRIMARY KEY, amount numeric);
ALTER TABLE public.ledger OWNER TO medallion_test_app;
GRANT SELECT ON public.ledger TO medallion_test_admin, medallion_test_auditor;
\c - medallion_test_admin
SELECT medallion.enable_audit('public.ledger');
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'public.ledger'::regclass ORDER BY 1;
\c - medallion_test_app
INSERT INTO public.ledger VALUES (1, 100);
ALTER TABLE public.ledger DISABLE TRIGGER medallion_audit;
UPDATE public.ledger SET amount = 1 WHERE id = 1;
ALTER TABLE public.ledger ENABLE TRIGGER medallion_audit;
\c - medallion_test_auditor
SELECT table_name, status, records,
       regexp_replace(problem, '\d{4}-\d\d-\d\dT[0-9:.]+Z', '<at>', 'g') AS problem
  FROM medallion.verify_audit('public.ledger');
SELECT event, by_role, detail FROM medallion.audit_gaps WHERE table_name = 'public.ledger' ORDER BY id;
-- The owner cannot erase the record of it.
\c - medallion_test_app
SELECT err($$DELETE FROM medallion.audit_gaps$$);
\c - postgres
SELECT err($$DELETE FROM medallion.audit_gaps$$);
-- An admin restores capture: recorded, and the gap stays reported.
\c - medallion_test_admin
SELECT medallion.enable_audit('public.ledger');
\c - medallion_test_app
DROP TRIGGER medallion_audit_truncate ON public.ledger;
\c - medallion_test_auditor
SELECT event, by_role, detail FROM medallion.audit_gaps WHERE table_name = 'public.ledger' ORDER BY id;
SELECT status, regexp_replace(problem, '\d{4}-\d\d-\d\dT[0-9:.]+Z', '<at>', 'g') AS problem
  FROM medallion.verify_audit('public.ledger');
-- Changes of column lists by enable_audit itself are not gaps.
\c - medallion_test_admin
SELECT medallion.enable_audit('public.ledger', exclude_columns => ARRAY['amount']);
SELECT medallion.disable_audit('public.ledger');
SELECT event, by_role, detail FROM medallion.audit_gaps WHERE table_name = 'public.ledger' ORDER BY id;

-- Operator shadowing: a writer who may create objects in its own schema
-- shadows `=` for every type the capture trigger's catalog lookups compare
-- (and unnest of an int2vector), puts its schema before pg_catalog and
-- writes audited rows from a fresh backend, so every lookup runs. Its
-- functions would record who ran them; none of them runs at all, and the
-- records are written as medallion_audit_writer, which is no superuser.
\c - postgres
CREATE SCHEMA app_own AUTHORIZATION medallion_test_app;
CREATE TABLE public.shadow_target (id int PRIMARY KEY, v text);
GRANT ALL ON public.shadow_target TO medallion_test_app;
GRANT SELECT ON public.shadow_target TO medallion_test_admin;
\c - medallion_test_admin
SELECT medallion.enable_audit('public.shadow_target');
\c - medallion_test_app
CREATE TABLE app_own.calls (who name, what text);
GRANT INSERT ON app_own.calls TO PUBLIC;
GRANT USAGE ON SCHEMA app_own TO PUBLIC;
CREATE FUNCTION app_own.noted(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN INSERT INTO app_own.calls VALUES (current_user, what); END $$;
CREATE FUNCTION app_own.eq(oid, oid) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN PERFORM app_own.noted('oid'); RETURN pg_catalog.oideq($1, $2); END $$;
CREATE FUNCTION app_own.eq(name, name) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN PERFORM app_own.noted('name'); RETURN pg_catalog.nameeq($1, $2); END $$;
CREATE FUNCTION app_own.eq("char", "char") RETURNS bool LANGUAGE plpgsql AS $$
BEGIN PERFORM app_own.noted('char'); RETURN pg_catalog.chareq($1, $2); END $$;
CREATE FUNCTION app_own.eq(int2, int2) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN PERFORM app_own.noted('int2'); RETURN pg_catalog.int2eq($1, $2); END $$;
CREATE FUNCTION app_own.eq(int4, int4) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN PERFORM app_own.noted('int4'); RETURN pg_catalog.int4eq($1, $2); END $$;
CREATE FUNCTION app_own.unnest(int2vector) RETURNS SETOF int2 LANGUAGE plpgsql AS $$
BEGIN PERFORM app_own.noted('unnest'); RETURN QUERY SELECT pg_catalog.unnest($1::int2[]); END $$;
CREATE OPERATOR app_own.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = app_own.eq);
CREATE OPERATOR app_own.= (LEFTARG = name, RIGHTARG = name, FUNCTION = app_own.eq);
CREATE OPERATOR app_own.= (LEFTARG = "char", RIGHTARG = "char", FUNCTION = app_own.eq);
CREATE OPERATOR app_own.= (LEFTARG = int2, RIGHTARG = int2, FUNCTION = app_own.eq);
CREATE OPERATOR app_own.= (LEFTARG = int4, RIGHTARG = int4, FUNCTION = app_own.eq);
-- The shadows work: the writer's own query under that path calls them.
SET search_path = app_own, pg_catalog, public;
SELECT 'pg_class'::name = 'pg_class'::name AS own_query;
SELECT who, what FROM app_own.calls;
TRUNCATE app_own.calls;
\c - medallion_test_app
SET search_path = app_own, pg_catalog, public;
INSERT INTO public.shadow_target VALUES (1, 'a'), (2, 'b');
UPDATE public.shadow_target SET v = 'c' WHERE id OPERATOR(pg_catalog.=) 1;
DELETE FROM public.shadow_target WHERE id OPERATOR(pg_catalog.=) 2;
RESET search_path;
SELECT count(*) AS shadow_calls FROM app_own.calls;
\c - medallion_test_auditor
SELECT op, pk, old, new, db_role FROM medallion.audit_log
 WHERE table_name = 'public.shadow_target' ORDER BY id;
SELECT rolsuper, rolcanlogin, rolinherit, rolcreaterole, rolbypassrls FROM pg_roles
 WHERE rolname = 'medallion_audit_writer';
-- The writer role holds INSERT on the log and nothing else in the schema.
SELECT c.relname, p.privilege_type FROM pg_class c,
       LATERAL aclexplode(c.relacl) p
 WHERE c.relnamespace = 'medallion'::regnamespace
   AND p.grantee = 'medallion_audit_writer'::regrole ORDER BY 1, 2;
