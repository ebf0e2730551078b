-- The landing convention for SaaS data (Fivetran-style): one table per API
-- object in schema `landing`, the API's id as primary key, where it came
-- from (`_source`), when it was loaded (`_loaded_at`), the raw object
-- (`payload`) and the typed columns reports need. Loaders only upsert here;
-- medallion replicates it like any Odoo table (bronze → silver → gold).
CREATE SCHEMA IF NOT EXISTS landing;

-- Stripe-shaped payouts: money the provider sent to the bank account.
CREATE TABLE IF NOT EXISTS landing.payment_payouts (
    id            text PRIMARY KEY,                 -- po_… (the API id)
    _source       text NOT NULL,                    -- e.g. 'stripe:acct_123'
    _loaded_at    timestamptz NOT NULL DEFAULT now(),
    payload       jsonb NOT NULL,                   -- the object as the API returned it
    amount        numeric(14, 2) NOT NULL,          -- in currency units (the API sends cents)
    currency      text NOT NULL,
    arrival_date  date,
    status        text NOT NULL
);

-- Declared like any table: bronze, then silver (current state) by default;
-- a table outside `public` is `silver.<schema>_<table>`: here
-- `silver.landing_payment_payouts`.
SELECT medallion.add_sources('landing');
