//! End-to-end tests: a real Postgres 15 per test (wal_level = logical), the
//! real pg_medallion extension, the medallion sidecar, and the bronze Delta
//! tables read back with a Parquet reader and compared with the source.
//!
//! One binary, a module per area; the harness is `medallion_tests::harness`.

#[path = "e2e/bronze.rs"]
mod bronze;

#[path = "e2e/odoo.rs"]
mod odoo;

#[path = "e2e/refine.rs"]
mod refine;

#[path = "e2e/audit.rs"]
mod audit;

#[path = "e2e/object_store.rs"]
mod object_store;

#[path = "e2e/copy_race.rs"]
mod copy_race;

#[path = "e2e/sidecar_security.rs"]
mod sidecar_security;

#[path = "e2e/definition_fuzz.rs"]
mod definition_fuzz;

#[path = "e2e/cli.rs"]
mod cli;

#[path = "e2e/gold_sql.rs"]
mod gold_sql;

#[path = "e2e/odoo_package.rs"]
mod odoo_package;

#[path = "e2e/operate.rs"]
mod operate;

#[path = "e2e/landing.rs"]
mod landing;

#[path = "e2e/n8n.rs"]
mod n8n;

#[path = "e2e/deploy.rs"]
mod deploy;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use medallion::Config;
use medallion::app_id::AppId;
use medallion::bronze::TableId;
use medallion::replicate::{self, RunOptions};
use medallion_tests::cluster::ClusterOptions;
use medallion_tests::harness::*;
use medallion_tests::lake;
use tokio_util::sync::CancellationToken;
