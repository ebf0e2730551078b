-- The trust boundary, the effective caller: privileges checked as current_user,
-- the event trigger, publishing into others' objects.

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

