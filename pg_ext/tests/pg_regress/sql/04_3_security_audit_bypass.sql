-- The trust boundary, the audit trail: bypassing the capture trigger, operator
-- shadowing, the writer role's privileges.

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
