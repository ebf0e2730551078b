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
    /// Whether the buffered changes are due for a commit (called at a
    /// transaction boundary).
    pub(super) fn should_flush(&self) -> bool {
        let size = self.tables.values().fold((0usize, 0usize), |(r, b), t| {
            let (tr, tb) = t.batch.due_size();
            (r + tr, b + tb)
        });
        self.policy
            .due(self.pending_since, self.last_change, Instant::now(), size)
    }

    /// Commit every table with pending changes, then acknowledge (only
    /// when every commit succeeded: see [`super::batch`]).
    pub(super) async fn flush_all(&mut self, stream: &mut LogicalReplicationStream) -> Result<()> {
        let slot = &self.cfg.slot;
        let (status, metrics, summary) = (&mut self.status, &self.metrics, &mut self.summary);
        let flush_started = Instant::now();
        let mut started = flush_started;
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
        let end = self.last_commit_end;
        self.ack(stream, end).await?;
        if self.pending_since.take().is_some() {
            self.last_flush.record(flush_started, Instant::now());
        }
        Ok(())
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
        if let Some(a) = &self.acknowledged {
            a.advance(lsn);
        }
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

/// When buffered changes are committed: by size, by age, or because the
/// stream went quiet.
#[derive(Debug, Clone, Copy)]
pub(super) struct FlushPolicy {
    pub rows: usize,
    pub bytes: usize,
    /// The oldest buffered change is this old.
    pub interval: Duration,
    /// No change arrived for this long: nothing more is coming soon, so
    /// waiting only delays what is buffered. A busy stream never pauses this
    /// long and still batches up to `interval`.
    pub idle: Option<Duration>,
}

impl FlushPolicy {
    pub(super) fn of(cfg: &crate::Config) -> FlushPolicy {
        FlushPolicy {
            rows: cfg.flush_rows,
            bytes: cfg.flush_bytes,
            interval: cfg.flush_interval(),
            idle: cfg.idle_flush(),
        }
    }

    /// Whether changes buffered since `pending_since` (None: nothing
    /// buffered), the last of which arrived at `last_change`, are due now.
    pub(super) fn due(
        &self,
        pending_since: Option<Instant>,
        last_change: Instant,
        now: Instant,
        (rows, bytes): (usize, usize),
    ) -> bool {
        let Some(since) = pending_since else {
            return false;
        };
        now.duration_since(since) >= self.interval
            || rows >= self.rows
            || bytes >= self.bytes
            || self
                .idle
                .is_some_and(|idle| now.duration_since(last_change) >= idle)
    }

    /// How long the loop may wait for the next message before it must look
    /// again: until the batch is due by age or by quiet.
    pub(super) fn wait(&self, pending_since: Option<Instant>, last_change: Instant) -> Duration {
        let Some(since) = pending_since else {
            return Duration::from_millis(500);
        };
        let by_age = self.interval.saturating_sub(since.elapsed());
        let by_quiet = self
            .idle
            .map(|idle| idle.saturating_sub(last_change.elapsed()))
            .unwrap_or(by_age);
        by_age.min(by_quiet).max(Duration::from_millis(5))
    }
}

/// The last flush: since when the changes read right after it have been
/// waiting.
#[derive(Debug, Default)]
pub(super) struct LastFlush(Option<(Instant, Instant)>);

impl LastFlush {
    pub(super) fn record(&mut self, started: Instant, ended: Instant) {
        self.0 = Some((started, ended));
    }

    /// Since when a change that completed a transaction at `now`, the first
    /// one after a flush, has been waiting. The stream is not read during a
    /// flush, so what arrived meanwhile is read in a burst right after it:
    /// a change read within one flush's time after the flush ended is
    /// counted from the flush's start, so the time a commit takes is not
    /// added to the next batch's wait (at worst that batch commits as much
    /// early); a later one from `now`.
    ///
    /// The next batch still reads for at least half an `interval` after the
    /// flush: a flush slower than that (a loaded machine, a slow store)
    /// would otherwise leave every batch due at its first transaction's end,
    /// one transaction a commit, and a backlog would be read no faster than
    /// commits are made.
    pub(super) fn waiting_since(&self, now: Instant, interval: Duration) -> Instant {
        match self.0 {
            Some((started, ended))
                if now.duration_since(ended) <= ended.duration_since(started) =>
            {
                ended
                    .checked_sub(interval / 2)
                    .map_or(started, |t| t.max(started))
            }
            _ => now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_millis(1000);

    const POLICY: FlushPolicy = FlushPolicy {
        rows: 100,
        bytes: 1 << 20,
        interval: Duration::from_millis(1000),
        idle: Some(Duration::from_millis(100)),
    };

    #[test]
    fn nothing_buffered_is_never_due() {
        let now = Instant::now();
        assert!(!POLICY.due(None, now - Duration::from_secs(60), now, (0, 0)));
    }

    #[test]
    fn a_quiet_stream_commits_at_once_and_a_busy_one_batches() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // One transaction, then silence: due 100 ms after its last change.
        assert!(!POLICY.due(Some(t0), t0, ms(50), (1, 10)));
        assert!(POLICY.due(Some(t0), t0, ms(100), (1, 10)));
        // A change every 10 ms: never quiet, due at the 1 s interval.
        assert!(!POLICY.due(Some(t0), ms(990), ms(999), (99, 10)));
        assert!(POLICY.due(Some(t0), ms(1000), ms(1000), (99, 10)));
        // Size triggers whatever the time.
        assert!(POLICY.due(Some(t0), ms(1), ms(1), (100, 10)));
        assert!(POLICY.due(Some(t0), ms(1), ms(1), (1, 1 << 20)));
        // Without an idle flush, only age and size count.
        let off = FlushPolicy {
            idle: None,
            ..POLICY
        };
        assert!(!off.due(Some(t0), t0, ms(999), (1, 10)));
        assert!(off.due(Some(t0), t0, ms(1000), (1, 10)));
    }

    #[test]
    fn the_loop_waits_no_longer_than_the_next_reason_to_commit() {
        let now = Instant::now();
        assert_eq!(POLICY.wait(None, now), Duration::from_millis(500));
        let w = POLICY.wait(Some(now), now);
        assert!(
            w <= Duration::from_millis(100) && w > Duration::from_millis(50),
            "{w:?}"
        );
        let off = FlushPolicy {
            idle: None,
            ..POLICY
        };
        let w = off.wait(Some(now), now);
        assert!(w > Duration::from_millis(900), "{w:?}");
    }

    #[test]
    fn a_change_read_right_after_a_flush_waited_since_the_flush_began() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut c = LastFlush::default();
        // Before any flush: since it was read.
        assert_eq!(c.waiting_since(ms(10), SECOND), ms(10));
        // A flush from 100 to 180 ms: the stream was not read meanwhile.
        c.record(ms(100), ms(180));
        assert_eq!(c.waiting_since(ms(181), SECOND), ms(100));
        assert_eq!(c.waiting_since(ms(260), SECOND), ms(100));
        // Read later than one flush's time after it: it arrived late.
        assert_eq!(c.waiting_since(ms(261), SECOND), ms(261));
    }

    #[test]
    fn after_a_flush_slower_than_half_the_interval_the_next_batch_reads_for_half_of_it() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut c = LastFlush::default();
        // A flush of 800 ms (interval 1 s): the changes read right after it
        // are due 500 ms after it ended, not at once.
        c.record(ms(100), ms(900));
        assert_eq!(c.waiting_since(ms(901), SECOND), ms(400));
        assert!(!POLICY.due(Some(ms(400)), ms(1399), ms(1399), (1, 10)));
        assert!(POLICY.due(Some(ms(400)), ms(1400), ms(1400), (1, 10)));
        // Exactly half: as before, since the flush began.
        c.record(ms(2000), ms(2500));
        assert_eq!(c.waiting_since(ms(2501), SECOND), ms(2000));
    }
}
