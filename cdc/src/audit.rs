//! Sealing the audit trail (`pg_medallion` audit functions).
//!
//! Audited writes append records to `medallion.audit_log` without waiting
//! for the hash chain; `medallion.seal_audit()` chains committed records.
//! The refinement loop calls it every tick so records are sealed within
//! `MEDALLION_REFINE_INTERVAL_MS` while the sidecar runs (without a sidecar,
//! pg_cron or `verify_audit` seal instead: docs/sql-api.md).

use tokio_postgres::Client;

use crate::catalog::Field;
use crate::error::{Error, Result};

/// Seal every committed audit record; returns how many were sealed. Does
/// nothing (0) when no table was ever audited or the extension predates audit.
pub async fn seal(client: &Client) -> Result<i64> {
    let row = client
        .query_one(
            "SELECT to_regclass('medallion.audit_tables') IS NOT NULL \
               AND to_regprocedure('medallion.seal_audit(integer)') IS NOT NULL",
            &[],
        )
        .await
        .map_err(Error::pg("check audit functions"))?;
    if !row.field::<bool>(0)? {
        return Ok(0);
    }
    // seal_audit itself (granted to medallion_admin), one batch per call,
    // until a batch is not full: the sidecar's role need not be superuser.
    let mut total = 0;
    loop {
        let row = client
            .query_one(
                "SELECT CASE WHEN EXISTS (SELECT 1 FROM medallion.audit_tables) \
                        THEN medallion.seal_audit($1) ELSE 0 END",
                &[&SEAL_BATCH],
            )
            .await
            .map_err(Error::pg("seal audit records (medallion.seal_audit)"))?;
        let sealed: i64 = row.field(0)?;
        total += sealed;
        if sealed < i64::from(SEAL_BATCH) {
            return Ok(total);
        }
    }
}

/// Records one `seal_audit` call seals at most.
const SEAL_BATCH: i32 = 100_000;
