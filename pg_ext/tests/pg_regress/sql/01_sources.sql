\c - medallion_test_admin
SELECT current_user, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser;

-- add a source: publishes it, creates a managed silver table
SELECT medallion.add_source('public.res_partner');
SELECT medallion.add_source('public.res_partner');               -- same call twice: no-op
SELECT medallion.add_source('public.sale_order', silver => 'scd2');
SELECT tablename, attnames, rowfilter FROM pg_publication_tables WHERE pubname = 'medallion' ORDER BY 1;
SELECT name, keys, history, managed FROM medallion.silver_tables ORDER BY name;

-- changed arguments update the definition (column list + row filter on the key)
SELECT medallion.add_source('public.res_partner', columns => ARRAY['id', 'name', 'email'], row_filter => 'id > 1');
SELECT tablename, attnames, rowfilter FROM pg_publication_tables WHERE pubname = 'medallion' ORDER BY 1;

-- errors
SELECT err($$SELECT medallion.add_source('public.no_key')$$);
SELECT err($$SELECT medallion.add_source('public.partner_view')$$);
SELECT err($$SELECT medallion.add_source('public.res_partner', silver => 'gold')$$);
SELECT err($$SELECT medallion.add_source('public.res_partner', columns => ARRAY['name'])$$);
SELECT err($$SELECT medallion.add_source('public.res_partner', columns => ARRAY['id', 'nope'])$$);
SELECT err($$SELECT medallion.add_source('public.res_partner', row_filter => 'company_id = 1')$$);
SELECT err($$SELECT medallion.add_source('public.res_partner', row_filter => 'id >')$$);
SELECT err($$SELECT medallion.add_source('public.secret')$$);
SELECT err($$SELECT medallion.add_source('public.missing')$$);
SELECT err($$SELECT medallion.add_sources('nosuchschema')$$);

-- whole schema: one call; noise and transient (wizard) tables excluded, keyless skipped
SELECT medallion.add_sources('odoo');
SELECT source_table, schema_source, silver FROM medallion.sources WHERE source_schema = 'odoo' ORDER BY 1;
-- a table created later is picked up by the event trigger
\c - postgres
CREATE TABLE odoo.sale_margin_thing (id int PRIMARY KEY, margin numeric);
CREATE TABLE odoo.bus_presence (id int PRIMARY KEY);
\c - medallion_test_admin
SELECT source_table FROM medallion.sources WHERE source_schema = 'odoo' ORDER BY 1;

-- resync, sync_publication
SELECT medallion.resync('public.sale_order');
SELECT resync_requested_at IS NOT NULL AS requested FROM medallion.sources WHERE source_table = 'sale_order';
SELECT err($$SELECT medallion.resync('public.account_account')$$);
SELECT medallion.sync_publication();

-- drop: the managed silver goes with the source; other dependents need cascade
SELECT medallion.drop_sources('odoo');
SELECT count(*) FROM medallion.sources WHERE source_schema = 'odoo';
SELECT err($$SELECT medallion.drop_source('public.account_account')$$);
SELECT medallion.drop_source('public.res_partner');
SELECT name FROM medallion.silver_tables ORDER BY 1;
SELECT tablename FROM pg_publication_tables WHERE pubname = 'medallion' ORDER BY 1;

-- nobody else may use the API
\c - medallion_test_nobody
SELECT err($$SELECT medallion.add_source('public.sale_order_line')$$);
