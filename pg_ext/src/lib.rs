//! pg_medallion — the control plane of medallion.
//!
//! Users declare their lakehouse in SQL (schema `medallion`); the sidecar
//! (`cdc/`) reads these catalog tables and executes them:
//!
//! ```text
//!  add_source / add_sources ──► medallion.sources ──► publication `medallion`
//!  define_silver ─────────────► medallion.silver_tables      │ (pgoutput)
//!  expect ────────────────────► medallion.expectations       ▼
//!  define_gold ───────────────► medallion.gold_models     sidecar ──► Delta lake
//!  install_package ──► (add_source, define_gold, publish) ──► medallion.packages
//!                               medallion.dependencies       │
//!  status() / slots() ◄──────── medallion.table_status ◄─────┘ (writes status)
//! ```
//!
//! Every definition change sends `NOTIFY medallion_config` so a running
//! sidecar reloads; `refresh()` sends `NOTIFY medallion_refresh`.
//! Every API function is `SECURITY DEFINER` with `search_path` pinned to
//! `pg_catalog, pg_temp`, revoked from PUBLIC and granted to `medallion_admin`.

use pgrx::prelude::*;

mod audit;
mod catalog;
mod expression;
mod gold;
mod lineage;
mod names;
mod package;
mod predicate;
mod raise;
mod silver;
mod source;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["wal_level = logical"]
    }
}
