-- A Supabase (self-hosted) migration declaring an Odoo lakehouse pipeline.
-- Idempotent: every medallion call is an upsert, so `supabase db reset` or
-- re-running the migration changes nothing; edit a call and re-run to update.
-- Hosted Supabase cannot load custom extensions: this needs self-hosted
-- Supabase (or any Postgres 15) with pg_medallion installed.

CREATE EXTENSION IF NOT EXISTS pg_medallion;

-- The role the migration runs as (postgres on Supabase, not a superuser there)
-- declares pipelines; BI users read status.
GRANT medallion_admin TO postgres;

-- Bronze: every Odoo table, minus Odoo's noise tables, one silver table each.
SELECT medallion.add_sources('public');

-- History of invoices besides their current state: SCD2 on the columns
-- auditors care about.
SELECT medallion.define_silver('account_move_history', 'public.account_move',
                               history => 'scd2',
                               track_columns => ARRAY['state', 'amount_total', 'payment_state']);

-- Data quality.
SELECT medallion.expect('silver.account_move_line', 'balanced_line',
                        'NOT (debit <> 0 AND credit <> 0)', 'drop');
SELECT medallion.expect('silver.sale_order', 'has_partner', 'partner_id IS NOT NULL');

-- Gold: monthly revenue per customer, refreshed when its silver tables advance.
SELECT medallion.define_gold('monthly_revenue', $$
    SELECT date_trunc('month', m.invoice_date) AS month,
           p.name AS customer,
           sum(m.amount_untaxed) AS revenue
      FROM silver.account_move m
      JOIN silver.res_partner p ON p.id = m.partner_id
     WHERE m.move_type = 'out_invoice' AND m.state = 'posted'
     GROUP BY 1, 2
$$, keys => ARRAY['month', 'customer']);

-- Audit: who changed invoices, journal items and partners. On Supabase the
-- application user recorded is auth.uid() (the JWT subject of the request);
-- write_date changes on every Odoo write and is left out of the trail.
SELECT medallion.enable_audit('public.account_move', exclude_columns => ARRAY['write_date']);
SELECT medallion.enable_audit('public.account_move_line', exclude_columns => ARRAY['write_date']);
SELECT medallion.enable_audit('public.res_partner', exclude_columns => ARRAY['write_date']);
-- Without a running sidecar, seal the chain every minute with pg_cron:
--   SELECT cron.schedule('medallion-seal', '* * * * *', 'SELECT medallion.seal_audit()');
