//! Status written back to Postgres (`medallion.table_status`), throttled,
//! and kept in memory for `/metrics`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::bronze::TableId;
use crate::error::{Error, Result};

/// State of one bronze table as shown in `medallion.status()`.
#[derive(Debug, Clone, Default)]
pub struct TableStatus {
    pub state: &'static str,
    pub last_lsn: Option<u64>,
    pub last_commit_us: Option<i64>,
    pub delta_version: Option<i64>,
    /// Rows written since the last status write.
    pub new_rows: i64,
    pub last_error: Option<String>,
    dirty: bool,
}

/// Collects table states and writes them at most every `interval`.
pub struct StatusBoard {
    slot: String,
    enabled: bool,
    interval: Duration,
    last_write: Option<Instant>,
    tables: BTreeMap<TableId, TableStatus>,
}

impl StatusBoard {
    pub fn new(slot: &str, enabled: bool, interval: Duration) -> Self {
        StatusBoard {
            slot: slot.to_string(),
            enabled,
            interval,
            last_write: None,
            tables: BTreeMap::new(),
        }
    }

    pub fn update(&mut self, id: &TableId, f: impl FnOnce(&mut TableStatus)) {
        let s = self.tables.entry(id.clone()).or_default();
        f(s);
        s.dirty = true;
    }

    /// Write dirty rows if the interval has passed (or `force`).
    pub async fn flush(&mut self, client: &Client, force: bool) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if !force && self.last_write.is_some_and(|t| t.elapsed() < self.interval) {
            return Ok(());
        }
        let stmt = client
            .prepare(
                "INSERT INTO medallion.table_status AS s (slot_name, layer, name, state, last_lsn, last_commit_at, \
                    delta_version, rows_total, lag_seconds, last_error, updated_at) \
                 VALUES ($1, 'bronze', $2, $3, $4::text::pg_lsn, to_timestamp($5::float8), $6, $7, \
                    extract(epoch FROM clock_timestamp())::float8 - $5::float8, $8, clock_timestamp()) \
                 ON CONFLICT (slot_name, layer, name) DO UPDATE SET state = EXCLUDED.state, \
                    last_lsn = COALESCE(EXCLUDED.last_lsn, s.last_lsn), \
                    last_commit_at = COALESCE(EXCLUDED.last_commit_at, s.last_commit_at), \
                    delta_version = COALESCE(EXCLUDED.delta_version, s.delta_version), \
                    rows_total = s.rows_total + EXCLUDED.rows_total, lag_seconds = EXCLUDED.lag_seconds, \
                    last_error = EXCLUDED.last_error, updated_at = EXCLUDED.updated_at",
            )
            .await
            .map_err(Error::pg("prepare status write"))?;
        for (id, s) in self.tables.iter_mut().filter(|(_, s)| s.dirty) {
            let lsn = s.last_lsn.map(pg_walstream::format_lsn);
            let commit_secs = s.last_commit_us.map(|us| us as f64 / 1e6);
            client
                .execute(
                    &stmt,
                    &[
                        &self.slot,
                        &id.to_string(),
                        &s.state,
                        &lsn,
                        &commit_secs,
                        &s.delta_version,
                        &s.new_rows,
                        &s.last_error,
                    ],
                )
                .await
                .map_err(Error::pg("write medallion.table_status"))?;
            s.new_rows = 0;
            s.dirty = false;
        }
        self.last_write = Some(Instant::now());
        Ok(())
    }
}
