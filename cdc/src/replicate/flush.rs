//! Batch → flush → acknowledge: every table's buffered changes committed
//! to bronze with the LSN in the same commit, and only then the end of the
//! last applied transaction acknowledged to the slot.

use std::time::{Duration, Instant};

use pg_walstream::LogicalReplicationStream;

use crate::app_id::AppId;
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
            let (tr, tb) = t.batch.buffered();
            (r + tr, b + tb)
        });
        rows >= self.cfg.flush_rows || bytes >= self.cfg.flush_bytes
    }

    /// Commit every table with pending changes, then acknowledge (only
    /// when every commit succeeded: see [`super::batch`]).
    pub(super) async fn flush_all(&mut self, stream: &mut LogicalReplicationStream) -> Result<()> {
        let slot = &self.cfg.slot;
        let (status, metrics, summary) = (&mut self.status, &self.metrics, &mut self.summary);
        let mut started = Instant::now();
        batch::commit_all(
            batch::pending(&mut self.tables, |t| {
                t.failed.is_none().then_some(&mut t.batch)
            }),
            |id| AppId::Stream { slot, table: id }.to_string(),
            |id, done| {
                crate::fault::hit(crate::fault::AFTER_BRONZE_COMMIT);
                summary.commits += 1;
                metrics.commit(started.elapsed());
                started = Instant::now();
                status.update(id, |s| {
                    s.state = ObjectState::Streaming;
                    s.last_lsn = Some(done.position);
                    s.delta_version = done.version.or(s.delta_version);
                    s.new_rows += done.rows as i64;
                    s.last_commit_us = done.commit_ts_us.or(s.last_commit_us);
                });
            },
        )
        .await?;
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
