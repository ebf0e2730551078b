//! Test support for medallion: a private Postgres cluster per test
//! ([`cluster`]), the Odoo-shaped data generator ([`odoo`]), helpers that read
//! Delta tables back ([`lake`]) and locate the real Odoo 18 facts in
//! `../shared/odoo18` ([`shared`]), comparisons with Postgres itself
//! ([`oracle`]), a private S3-compatible server (Ceph RGW, [`s3`]) and loopback ports
//! for the servers a test starts ([`ports`]), and the soak's verdict on
//! whether a measure stayed flat ([`flatness`]).

pub mod cluster;
pub mod flatness;
pub mod growth;
pub mod harness;
pub mod lake;
pub mod odoo;
pub mod oracle;
pub mod ports;
pub mod s3;
pub mod shared;

/// Errors of the test harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Something the suite needs is not installed: the message says what to run.
    #[error("test prerequisite missing: {0}")]
    Prerequisite(String),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("command failed: {0}")]
    Command(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
