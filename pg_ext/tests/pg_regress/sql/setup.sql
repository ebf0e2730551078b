-- Runs once after the regression database is created. Everything after it
-- runs as a NON-superuser admin (as on Supabase), via \c in each test.
CREATE EXTENSION pg_medallion;
CREATE ROLE medallion_test_admin LOGIN;
GRANT medallion_admin TO medallion_test_admin;
CREATE ROLE medallion_test_reader LOGIN;
GRANT medallion_reader TO medallion_test_reader;
CREATE ROLE medallion_test_nobody LOGIN;

-- A few Odoo-shaped tables.
CREATE TABLE public.res_partner (id int PRIMARY KEY, name varchar, email varchar, company_id int, write_uid int);
CREATE TABLE public.sale_order (id int PRIMARY KEY, partner_id int, state varchar, amount_total numeric, date_order timestamp);
CREATE TABLE public.sale_order_line (id int PRIMARY KEY, order_id int, price_subtotal numeric);
CREATE TABLE public.account_account (id int PRIMARY KEY, account_type varchar);
CREATE TABLE public.no_key (a int, b text);
CREATE TABLE public.secret (id int PRIMARY KEY, v text);
CREATE VIEW public.partner_view AS SELECT id, name FROM public.res_partner;
GRANT SELECT ON public.res_partner, public.sale_order, public.sale_order_line, public.account_account,
    public.no_key, public.partner_view TO medallion_test_admin;

-- Odoo-like schema for add_sources: a transient (wizard) model, noise tables.
CREATE SCHEMA odoo;
CREATE TABLE odoo.ir_model (id int PRIMARY KEY, model varchar, transient bool);
INSERT INTO odoo.ir_model VALUES (1, 'res.partner', false), (2, 'account.payment.register', true);
CREATE TABLE odoo.res_partner (id int PRIMARY KEY, name varchar);
CREATE TABLE odoo.account_payment_register (id int PRIMARY KEY);
CREATE TABLE odoo.bus_bus (id int PRIMARY KEY);
CREATE TABLE odoo.ir_cron_trigger (id int PRIMARY KEY);
CREATE TABLE odoo.mail_message (id int PRIMARY KEY, body text);
CREATE TABLE odoo.rel_no_key (a int, b int);
GRANT USAGE ON SCHEMA odoo TO medallion_test_admin;
GRANT SELECT ON ALL TABLES IN SCHEMA odoo TO medallion_test_admin;
-- Tables created there later (module installs) are readable by the admin too.
ALTER DEFAULT PRIVILEGES IN SCHEMA odoo GRANT SELECT ON TABLES TO medallion_test_admin;

-- Shows SQLSTATE, message and hint of a failing statement.
CREATE FUNCTION public.err(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE m text; h text; s text;
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS s = RETURNED_SQLSTATE, m = MESSAGE_TEXT, h = PG_EXCEPTION_HINT;
    RETURN s || ': ' || m || E'\nHINT: ' || coalesce(h, '');
END $$;
GRANT EXECUTE ON FUNCTION public.err(text) TO PUBLIC;

-- Audit: an auditor and an application role with no rights on medallion.
CREATE ROLE medallion_test_auditor LOGIN;
GRANT medallion_auditor TO medallion_test_auditor;
CREATE ROLE medallion_test_app LOGIN;
CREATE TABLE public.account_move (id int PRIMARY KEY, name varchar, state varchar, amount_total numeric,
    date date, invoice_date timestamp, write_date timestamptz, narration text, payload jsonb, tags text[],
    write_uid int);
-- Stored out of line and uncompressed: every narration over ~2 kB is TOASTed.
ALTER TABLE public.account_move ALTER COLUMN narration SET STORAGE EXTERNAL;
CREATE TABLE public.move_tag_rel (move_id int, tag_id int, note text, PRIMARY KEY (move_id, tag_id));
GRANT ALL ON public.account_move, public.move_tag_rel TO medallion_test_app;
-- Whoever audits or reads a trail's rows may read the table.
GRANT SELECT ON public.account_move, public.move_tag_rel TO medallion_test_admin, medallion_test_auditor;
