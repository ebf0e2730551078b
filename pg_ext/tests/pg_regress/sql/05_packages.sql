-- Packages: install, re-install, options, upgrade, uninstall
-- (medallion.install_package and the model files in sql/packages/).
\c - postgres
CREATE TABLE public.account_move_line (id int PRIMARY KEY, move_id int, account_id int, journal_id int,
    company_id int, partner_id int, balance numeric);
CREATE TABLE public.account_journal (id int PRIMARY KEY, code varchar, name jsonb);
CREATE TABLE public.res_company (id int PRIMARY KEY, fiscalyear_last_month varchar);
GRANT SELECT ON public.account_move_line, public.account_journal, public.res_company TO medallion_test_admin;
\c - medallion_test_admin

-- res_company is a source whose silver table keeps history: the package
-- says so instead of reading every version as current, and changes nothing.
SELECT medallion.add_source('public.res_company', silver => 'scd2');
SELECT err($$SELECT * FROM medallion.install_package('odoo')$$);
SELECT count(*) AS packages FROM medallion.packages;
SELECT medallion.add_source('public.res_company', silver => 'current');

-- account_partial_reconcile does not exist: the model that reads it is
-- skipped, and named; every other model is defined and published.
SELECT * FROM medallion.install_package('odoo') ORDER BY 1;
SELECT name, version, options, models, sources, skipped FROM medallion.packages;
SELECT node, target_schema, target_table FROM medallion.publications WHERE node LIKE 'gold.odoo%' ORDER BY 1;
-- Again: nothing changes.
SELECT * FROM medallion.install_package('odoo') ORDER BY 1;

-- Options reach the models as checked values only.
SELECT object, state FROM medallion.install_package('odoo', '{"lang": "fr_FR", "companies": [2, 1]}') ORDER BY 1;
SELECT query LIKE '%j.name ->> ''fr_FR''%' AS lang, query LIKE '%l.company_id IN (1, 2)%' AS companies
  FROM medallion.gold_models WHERE name = 'odoo_gl_journal_items';
SELECT err($$SELECT * FROM medallion.install_package('odoo', '{"lang": "fr''); DROP TABLE x; --"}')$$);
SELECT err($$SELECT * FROM medallion.install_package('odoo', '{"companies": ["1 OR true"]}')$$);
SELECT err($$SELECT * FROM medallion.install_package('odoo', '{"language": "fr_FR"}')$$);
SELECT err($$SELECT * FROM medallion.install_package('odoo', '[]')$$);
SELECT err($$SELECT * FROM medallion.install_package('sap')$$);
SELECT err($$SELECT * FROM medallion.upgrade_package('sap')$$);
SELECT err($$SELECT * FROM medallion.uninstall_package('sap')$$);

-- Without publishing, the publications go; upgrade keeps the stored options.
SELECT object, state FROM medallion.install_package('odoo', '{"publish": false}') ORDER BY 1;
SELECT count(*) AS odoo_publications FROM medallion.publications WHERE node LIKE 'gold.odoo%';
SELECT object, state FROM medallion.upgrade_package('odoo') ORDER BY 1;
SELECT options FROM medallion.packages;

-- The files, to read and adapt.
SELECT file, model, length(sql) > 200 AS has_sql FROM medallion.package_files('odoo') ORDER BY 1;

-- The missing table appears (its module was installed); the caller may not
-- read it yet: the install fails, naming the grant, and changes nothing.
\c - postgres
CREATE TABLE public.account_partial_reconcile (id int PRIMARY KEY, debit_move_id int, credit_move_id int,
    max_date date);
\c - medallion_test_admin
SELECT err($$SELECT * FROM medallion.install_package('odoo')$$);
SELECT skipped FROM medallion.packages;
\c - postgres
GRANT SELECT ON public.account_partial_reconcile TO medallion_test_admin;
\c - medallion_test_admin
SELECT object, state, detail FROM medallion.install_package('odoo') WHERE state <> 'unchanged' ORDER BY 1;

-- Only pipeline admins install.
\c - medallion_test_reader
SELECT err($$SELECT * FROM medallion.install_package('odoo')$$);
SELECT count(*) > 0 AS reader_reads_files FROM medallion.package_files('odoo');
\c - medallion_test_nobody
SELECT err($$SELECT * FROM medallion.package_files('odoo')$$);

-- Uninstall: a model of the user's that reads a package model keeps it,
-- unless cascade; the sources the package added go, the user's stay.
\c - medallion_test_admin
SELECT medallion.define_gold('my_invoice_count', $$SELECT count(*) AS n FROM gold.odoo_invoices$$);
SELECT err($$SELECT * FROM medallion.uninstall_package('odoo')$$);
SELECT * FROM medallion.uninstall_package('odoo', cascade => true) ORDER BY 1;
SELECT count(*) AS packages FROM medallion.packages;
SELECT name FROM medallion.gold_models WHERE name LIKE 'odoo%' OR name = 'my_invoice_count';
SELECT source_table FROM medallion.sources WHERE source_schema = 'public' ORDER BY 1;
