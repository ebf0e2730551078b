//! Batch → flush → acknowledge: every table's buffered changes committed
//! to bronze with the LSN in the same commit, and only then the end of the
//! last applied transaction acknowledged to the slot.

use std::time::{Duration, Instant};

use deltalake::kernel::Transaction;
use pg_walstream::LogicalReplicationStream;

use crate::app_id::AppId;
use crate::bronze::TableId;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::status::ObjectState;

use super::*;

impl Replicator<'_> {
    pub(super) fn should_flush(&self) -> bool {
        let Some(since) = self.pending_since else {
            return false;
        };
        if since.elapsed() >= self.cfg.flush_interval() {
            return true;
        }
        let (rows, bytes) = self.tables.values().fold((0usize, 0usize), |(r, b), t| {
            (r + t.bronze.buffered_rows(), b + t.bronze.buffered_bytes())
        });
        rows >= self.cfg.flush_rows || bytes >= self.cfg.flush_bytes
    }

    /// Commit every table with pending changes, then acknowledge.
    pub(super) async fn flush_all(&mut self, stream: &mut LogicalReplicationStream) -> Result<()> {
        let ids: Vec<TableId> = self
            .tables
            .iter()
            .filter(|(_, t)| t.bronze.has_pending() && t.failed.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let started = Instant::now();
            let state = self.tables.get_mut(&id).expect("listed above");
            // The table's stream position never goes back: a commit with no
            // row (only a schema change, a Relation message inside a
            // transaction) carries the position already committed. A lower
            // version (0) would make a restart apply again every change
            // bronze holds above the slot's confirmed position.
            let lsn = state.pending_lsn.max(state.skip_upto);
            let version = state
                .bronze
                .commit(
                    vec![Transaction::new(
                        AppId::Stream {
                            slot: &self.cfg.slot,
                            table: &id,
                        }
                        .to_string(),
                        lsn.lake_value(),
                    )],
                    vec![
                        ("medallion.kind".into(), "stream".into()),
                        ("medallion.lsn".into(), lsn.to_string().into()),
                        ("medallion.rows".into(), state.pending_rows.into()),
                    ],
                )
                .await?;
            crate::fault::hit(crate::fault::AFTER_BRONZE_COMMIT);
            state.skip_upto = state.skip_upto.max(lsn);
            state.pending_lsn = Lsn::ZERO;
            let rows = std::mem::take(&mut state.pending_rows);
            self.summary.commits += 1;
            self.metrics.commit(started.elapsed());
            let commit_us = state.pending_ts_us.take();
            self.status.update(&id, |s| {
                s.state = ObjectState::Streaming;
                s.last_lsn = Some(lsn);
                s.delta_version = version.or(s.delta_version);
                s.new_rows += rows as i64;
                s.last_commit_us = commit_us.or(s.last_commit_us);
            });
        }
        self.pending_since = None;
        let end = self.last_commit_end;
        self.ack(stream, end).await
    }

    pub(super) async fn ack(
        &mut self,
        stream: &mut LogicalReplicationStream,
        lsn: Lsn,
    ) -> Result<()> {
        if lsn <= self.acked {
            return Ok(());
        }
        stream.shared_lsn_feedback.update_flushed_lsn(lsn.raw());
        stream.shared_lsn_feedback.update_applied_lsn(lsn.raw());
        stream
            .send_feedback()
            .await
            .map_err(Error::repl("send feedback"))?;
        self.acked = lsn;
        self.metrics.set_acked(lsn);
        Ok(())
    }

    /// Wait (briefly) until the server shows our acknowledgement.
    pub(super) async fn wait_confirmed(&self, lsn: Lsn) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(info) = crate::slot::read(&self.client, &self.cfg.slot).await?
                && info.confirmed_flush_lsn >= lsn
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!(lsn = %lsn, "server did not confirm the final acknowledgement in 10 s");
        Ok(())
    }
}
