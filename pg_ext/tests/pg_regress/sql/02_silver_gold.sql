\c - medallion_test_admin
SELECT medallion.add_source('public.sale_order');
SELECT medallion.add_source('public.sale_order_line');
SELECT medallion.add_source('public.res_partner', silver => 'none');
SELECT medallion.add_source('public.account_account');

-- silver
SELECT medallion.define_silver('partners', 'public.res_partner', history => 'scd2', track_columns => ARRAY['email']);
SELECT medallion.define_silver('partners', 'public.res_partner', history => 'scd2', track_columns => ARRAY['email']);
SELECT name, source_table, keys, history, track_columns, managed FROM medallion.silver_tables ORDER BY 1;
SELECT err($$SELECT medallion.define_silver('Bad-Name', 'public.res_partner')$$);
SELECT err($$SELECT medallion.define_silver('x', 'public.no_key')$$);
SELECT err($$SELECT medallion.define_silver('x', 'public.res_partner', history => 'scd3')$$);
SELECT err($$SELECT medallion.define_silver('x', 'public.res_partner', keys => ARRAY['nope'])$$);
SELECT err($$SELECT medallion.define_silver('x', 'public.res_partner', track_columns => ARRAY['email'])$$);

-- expectations
SELECT medallion.expect('silver.sale_order', 'total_not_negative', 'amount_total >= 0', 'drop');
SELECT medallion.expect('sale_order', 'has_partner', 'partner_id IS NOT NULL');
SELECT target, name, predicate, on_violation FROM medallion.expectations ORDER BY 1, 2;
SELECT err($$SELECT medallion.expect('silver.sale_order', 'bad', 'amount_total >=')$$);
SELECT err($$SELECT medallion.expect('silver.sale_order', 'bad', 'amount_total > 0', 'explode')$$);
SELECT err($$SELECT medallion.expect('silver.nothing', 'x', 'true')$$);
SELECT err($$SELECT medallion.drop_expectation('silver.sale_order', 'nope')$$);

-- gold
SELECT medallion.define_gold('revenue_by_partner', $$
    SELECT p.name, sum(o.amount_total) AS revenue
      FROM silver.sale_order o JOIN silver.partners p ON p.id = o.partner_id
     WHERE o.state = 'sale' GROUP BY p.name $$);
SELECT medallion.define_gold('top_partners', $$
    WITH r AS (SELECT * FROM gold.revenue_by_partner) SELECT * FROM r ORDER BY revenue DESC LIMIT 10 $$,
    refresh => '15 minutes');
SELECT name, refresh, refresh_interval FROM medallion.gold_models ORDER BY 1;
SELECT err($$SELECT medallion.drop_source('public.sale_order')$$);
SELECT err($$SELECT medallion.define_gold('g', 'SELEC 1')$$);
SELECT err($$SELECT medallion.define_gold('g', 'DELETE FROM silver.sale_order')$$);
SELECT err($$SELECT medallion.define_gold('g', 'SELECT * FROM res_partner')$$);
SELECT err($$SELECT medallion.define_gold('g', 'SELECT * FROM public.res_partner')$$);
SELECT err($$SELECT medallion.define_gold('g', 'SELECT * FROM silver.nothing')$$);
SELECT err($$SELECT medallion.define_gold('sale_order', 'SELECT 1')$$);
SELECT err($$SELECT medallion.define_gold('g', 'SELECT 1', refresh => 'often')$$);
SELECT err($$SELECT medallion.define_gold('revenue_by_partner', 'SELECT * FROM gold.top_partners')$$);
SELECT err($$SELECT medallion.define_gold('loop', 'SELECT * FROM gold.loop')$$);

-- lineage and pipeline
SELECT * FROM medallion.lineage ORDER BY 1, 2, 3, 4;
SELECT medallion.lineage_mermaid();
SELECT layer, name FROM medallion.pipeline ORDER BY 1, 2;

-- publish into Postgres
SELECT medallion.publish('revenue_by_partner');
SELECT medallion.publish('silver.sale_order', target_schema => 'bi', target_table => 'orders_current');
SELECT medallion.publish('revenue_by_partner', target_schema => 'bi');
-- keys of the published rows: a unique index on them, publication by difference
SELECT medallion.publish('revenue_by_partner', target_schema => 'bi', keys => ARRAY['name']);
SELECT err($$SELECT medallion.publish('revenue_by_partner', target_schema => 'bi', keys => '{}')$$);
SELECT node, target_schema, target_table, keys FROM medallion.publications ORDER BY node;
SELECT err($$SELECT medallion.publish('nothing')$$);
SELECT err($$SELECT medallion.publish('revenue_by_partner', target_schema => 'public')$$);
SELECT err($$SELECT medallion.publish('revenue_by_partner', target_schema => 'bi', target_table => 'orders_current')$$);
SELECT err($$SELECT medallion.publish('revenue_by_partner', target_table => 'Bad Name')$$);
SELECT medallion.unpublish('silver.sale_order');
SELECT err($$SELECT medallion.unpublish('sale_order')$$);

-- refresh signals the sidecar; dependency checks on drop
SELECT medallion.refresh('revenue_by_partner');
SELECT err($$SELECT medallion.refresh('nothing')$$);
SELECT err($$SELECT medallion.drop_gold('revenue_by_partner')$$);
SELECT err($$SELECT medallion.drop_silver('partners')$$);
SELECT medallion.drop_silver('partners', cascade => true);
SELECT name FROM medallion.gold_models ORDER BY 1;
SELECT node FROM medallion.publications ORDER BY 1;
SELECT err($$SELECT medallion.drop_gold('nothing')$$);

-- status is readable by the reader role, the catalog is not writable by it
\c - medallion_test_reader
SELECT count(*) AS status_rows FROM medallion.status();
SELECT count(*) AS slots FROM medallion.slots();
SELECT err($$SELECT medallion.add_source('public.sale_order')$$);
SELECT err($$DELETE FROM medallion.sources$$);
