//! One table's batch between the stream and bronze, and the flush of every
//! table's batch that must succeed before anything is acknowledged.
//!
//! ```text
//!  change of a transaction committed at L
//!      │  L ≤ committed position? ── yes ──► skipped (already in bronze)
//!      ▼ no
//!  BronzeSink::append (buffered; staged files invisible)
//!      ▼  flush: for every table with something pending, in order
//!  BronzeSink::commit(max(pending, committed)) ── Err ──► stop: nothing acknowledged
//!      ▼  all Ok
//!  acknowledge the end of the last applied transaction (the caller)
//! ```
//!
//! The bookkeeping lives here, apart from Postgres and the lake, so the unit
//! tests below drive it with an in-memory sink: a restart after a commit
//! that failed half-way through the tables gives every table each change
//! exactly once.

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::bronze::{BronzeTable, RowMeta, TableId, Value};
use crate::error::Result;
use crate::lsn::Lsn;

/// Where one source table's changes become durable: its bronze Delta table
/// ([`BronzeTable`]), or an in-memory table in unit tests.
///
/// # Delivery contract
///
/// - [`append`](Self::append) buffers one change and [`stage`](Self::stage)
///   may write buffered changes to storage; neither makes a change durable
///   or visible. A crash loses them, and nothing acknowledged depends on them.
/// - [`commit`](Self::commit) makes every change appended since the last
///   commit durable and visible in one atomic step, together with
///   `position` recorded under `app_id`: after `Ok`, the table holds every
///   change of the transactions committed at or before `position` exactly
///   once, and reading the table back (on a restart) gives `position`. An
///   `Err` means all or nothing happened; the caller acknowledges nothing
///   and the run starts again from the slot, which sends again whatever was
///   not acknowledged.
/// - [`discard`](Self::discard) drops everything appended and staged since
///   the last commit (a table stopped by a definite error).
#[async_trait]
pub(crate) trait BronzeSink: Send {
    /// Buffer one change; `values[i]` is the value of bronze column `i`.
    /// A value error is definite for the table (the caller stops it).
    fn append(&mut self, meta: RowMeta, values: &[Value<'_>]) -> Result<()>;
    /// Changes buffered in memory, not staged.
    fn buffered_rows(&self) -> usize;
    /// Approximate bytes buffered in memory.
    fn buffered_bytes(&self) -> usize;
    /// Whether anything (buffered, staged, a schema change) awaits a commit.
    fn has_pending(&self) -> bool;
    /// Write buffered changes to storage, still invisible (bounds memory).
    async fn stage(&mut self) -> Result<()>;
    /// Commit everything pending with `position`; the new table version.
    async fn commit(&mut self, app_id: &str, position: Lsn, rows: u64) -> Result<Option<i64>>;
    /// Drop everything not committed.
    fn discard(&mut self);
}

#[async_trait]
impl BronzeSink for BronzeTable {
    fn append(&mut self, meta: RowMeta, values: &[Value<'_>]) -> Result<()> {
        BronzeTable::append(self, meta, values)
    }

    fn buffered_rows(&self) -> usize {
        BronzeTable::buffered_rows(self)
    }

    fn buffered_bytes(&self) -> usize {
        BronzeTable::buffered_bytes(self)
    }

    fn has_pending(&self) -> bool {
        BronzeTable::has_pending(self)
    }

    async fn stage(&mut self) -> Result<()> {
        BronzeTable::stage(self).await
    }

    async fn commit(&mut self, app_id: &str, position: Lsn, rows: u64) -> Result<Option<i64>> {
        BronzeTable::commit(
            self,
            vec![deltalake::kernel::Transaction::new(
                app_id,
                position.lake_value(),
            )],
            vec![
                ("medallion.kind".into(), "stream".into()),
                ("medallion.lsn".into(), position.to_string().into()),
                ("medallion.rows".into(), rows.into()),
            ],
        )
        .await
    }

    fn discard(&mut self) {
        BronzeTable::discard(self)
    }
}

/// One table's changes between the stream and its sink.
pub(super) struct TableBatch<S> {
    pub(super) sink: S,
    /// Changes of transactions committed at or before this are in the sink.
    committed: Lsn,
    /// Highest commit LSN appended, not committed.
    pending: Lsn,
    pending_rows: u64,
    /// Source commit time of the newest pending change.
    pending_ts_us: Option<i64>,
}

/// What one table's commit made durable.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Committed {
    pub position: Lsn,
    pub rows: u64,
    pub version: Option<i64>,
    pub commit_ts_us: Option<i64>,
}

impl<S: BronzeSink> TableBatch<S> {
    /// A table whose sink holds every change up to `committed` (its recorded
    /// position, or the position of the copy it was created from).
    pub(super) fn resume(sink: S, committed: Lsn) -> TableBatch<S> {
        TableBatch {
            sink,
            committed,
            pending: Lsn::ZERO,
            pending_rows: 0,
            pending_ts_us: None,
        }
    }

    /// Whether the changes of the transaction committed at `lsn` are
    /// already in the sink (sent again after a restart): skipped.
    pub(super) fn holds(&self, lsn: Lsn) -> bool {
        lsn <= self.committed
    }

    /// Append one change of a transaction not yet held (see [`holds`](Self::holds)).
    pub(super) fn append(&mut self, meta: RowMeta, values: &[Value<'_>]) -> Result<()> {
        debug_assert!(!self.holds(meta.lsn), "a held change was appended");
        self.sink.append(meta, values)?;
        self.pending = self.pending.max(meta.lsn);
        self.pending_ts_us = Some(meta.commit_ts_us);
        self.pending_rows += 1;
        Ok(())
    }

    /// Commit what is pending. The position never goes back: a commit with
    /// no row (only a schema change) carries the position already committed;
    /// a lower one would make a restart apply again every change the table
    /// holds above the slot's confirmed position.
    pub(super) async fn commit(&mut self, app_id: &str) -> Result<Committed> {
        let position = self.pending.max(self.committed);
        let version = self
            .sink
            .commit(app_id, position, self.pending_rows)
            .await?;
        self.committed = position;
        self.pending = Lsn::ZERO;
        Ok(Committed {
            position,
            rows: std::mem::take(&mut self.pending_rows),
            version,
            commit_ts_us: self.pending_ts_us.take(),
        })
    }

    /// Rows and approximate bytes buffered in memory.
    pub(super) fn buffered(&self) -> (usize, usize) {
        (self.sink.buffered_rows(), self.sink.buffered_bytes())
    }

    /// What counts towards a commit being due: every row since the last
    /// commit (also those a large transaction staged to Parquet, no longer
    /// in memory) and the bytes buffered in memory.
    pub(super) fn due_size(&self) -> (usize, usize) {
        (self.pending_rows as usize, self.sink.buffered_bytes())
    }

    /// Bounded memory inside large transactions: once `rows` or `bytes` are
    /// buffered, stage them (written, still invisible), don't commit.
    pub(super) async fn bound_memory(&mut self, rows: usize, bytes: usize) -> Result<()> {
        let (r, b) = self.buffered();
        if r >= rows || b >= bytes {
            self.sink.stage().await?;
        }
        Ok(())
    }

    /// Drop everything not committed (the table stopped).
    pub(super) fn discard(&mut self) {
        self.sink.discard();
        self.pending = Lsn::ZERO;
        self.pending_rows = 0;
        self.pending_ts_us = None;
    }
}

/// Commit every listed table's batch, in order, stopping at the first
/// error (then nothing may be acknowledged). `after_each` runs after each
/// commit that succeeded (status, metrics, the fault point).
pub(super) async fn commit_all<'t, S: BronzeSink + 't>(
    batches: impl IntoIterator<Item = (&'t TableId, &'t mut TableBatch<S>)>,
    app_id: impl Fn(&TableId) -> String,
    mut after_each: impl FnMut(&TableId, &Committed),
) -> Result<()> {
    for (id, batch) in batches {
        let done = batch.commit(&app_id(id)).await?;
        after_each(id, &done);
    }
    Ok(())
}

/// The tables a flush commits: those with something pending that are not
/// stopped.
pub(super) fn pending<'t, S: BronzeSink, T: 't>(
    tables: &'t mut BTreeMap<TableId, T>,
    batch: impl Fn(&mut T) -> Option<&mut TableBatch<S>>,
) -> Vec<(&'t TableId, &'t mut TableBatch<S>)> {
    tables
        .iter_mut()
        .filter_map(|(id, t)| batch(t).map(|b| (id, b)))
        .filter(|(_, b)| b.sink.has_pending())
        .collect()
}

#[cfg(test)]
pub(super) mod memory {
    //! An in-memory [`BronzeSink`]: what a Delta table would hold, and a
    //! switch that makes the next commit fail.

    use super::*;
    use crate::error::Error;

    /// One committed change: (commit LSN, sequence in its transaction, value).
    pub type Row = (Lsn, i64, String);

    #[derive(Default)]
    pub struct MemorySink {
        pub committed: Vec<Row>,
        pub position: Option<Lsn>,
        pub commits: usize,
        pub pending: Vec<Row>,
        /// Of `pending`, how many the last `stage` wrote out of memory.
        pub staged: usize,
        pub fail_next_commit: bool,
    }

    #[async_trait]
    impl BronzeSink for MemorySink {
        fn append(&mut self, meta: RowMeta, values: &[Value<'_>]) -> Result<()> {
            let v = match values.first() {
                Some(Value::Text(t)) => String::from_utf8_lossy(t).into_owned(),
                Some(Value::Wire(w, t)) => w.render(t),
                Some(Value::Null) | Some(Value::Unchanged) | None => String::new(),
            };
            self.pending.push((meta.lsn, meta.seq, v));
            Ok(())
        }
        fn buffered_rows(&self) -> usize {
            self.pending.len() - self.staged
        }
        fn buffered_bytes(&self) -> usize {
            self.buffered_rows() * 16
        }
        fn has_pending(&self) -> bool {
            !self.pending.is_empty()
        }
        async fn stage(&mut self) -> Result<()> {
            self.staged = self.pending.len();
            Ok(())
        }
        async fn commit(&mut self, _app: &str, position: Lsn, rows: u64) -> Result<Option<i64>> {
            assert_eq!(rows as usize, self.pending.len(), "row count of the commit");
            if std::mem::take(&mut self.fail_next_commit) {
                return Err(Error::Protocol("injected commit failure".into()));
            }
            self.committed.append(&mut self.pending);
            self.staged = 0;
            self.position = Some(position);
            self.commits += 1;
            Ok(Some(self.commits as i64))
        }
        fn discard(&mut self) {
            self.pending.clear();
            self.staged = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory::{MemorySink, Row};
    use super::*;
    use crate::bronze::Op;

    fn id(t: &str) -> TableId {
        TableId {
            schema: "public".into(),
            table: t.into(),
        }
    }

    fn meta(lsn: u64, seq: i64) -> RowMeta {
        RowMeta {
            op: Op::Insert,
            lsn: Lsn::new(lsn),
            seq,
            commit_ts_us: lsn as i64,
            xid: 1,
        }
    }

    /// The stream as the slot sends it: transactions (commit LSN, changes
    /// per table) in commit order.
    type Stream = Vec<(u64, Vec<(&'static str, &'static str)>)>;

    fn stream() -> Stream {
        vec![
            (100, vec![("a", "a1"), ("b", "b1")]),
            (200, vec![("a", "a2")]),
            (300, vec![("b", "b2"), ("a", "a3"), ("b", "b3")]),
        ]
    }

    /// Apply the transactions after `from` (what the slot sends again after
    /// a restart: everything after the acknowledged position) to the
    /// batches, as the replicator does: held changes are skipped.
    fn apply(tables: &mut BTreeMap<TableId, TableBatch<MemorySink>>, s: &Stream, from: u64) {
        for (lsn, changes) in s.iter().filter(|(l, _)| *l > from) {
            for (seq, (t, v)) in changes.iter().enumerate() {
                let b = tables.get_mut(&id(t)).expect("table");
                if b.holds(Lsn::new(*lsn)) {
                    continue;
                }
                b.append(meta(*lsn, seq as i64 + 1), &[Value::Text(v.as_bytes())])
                    .expect("append");
            }
        }
    }

    async fn flush(tables: &mut BTreeMap<TableId, TableBatch<MemorySink>>) -> Result<Vec<String>> {
        let mut done = Vec::new();
        commit_all(
            pending(tables, |b| Some(b)),
            |id| format!("medallion:test:{id}"),
            |id, c| done.push(format!("{}@{}", id.table, c.position)),
        )
        .await?;
        Ok(done)
    }

    fn values(rows: &[Row]) -> Vec<&str> {
        rows.iter().map(|r| r.2.as_str()).collect()
    }

    /// A transaction larger than `flush_rows` is staged out of memory as it
    /// arrives; at its end the batch is still due by its rows, so it is
    /// committed then and does not wait for `flush_interval_ms`.
    #[tokio::test]
    async fn rows_a_large_transaction_staged_still_make_its_batch_due() {
        let mut b = TableBatch::resume(MemorySink::default(), Lsn::ZERO);
        for seq in 0..10 {
            b.append(meta(100, seq), &[Value::Text(b"v")]).unwrap();
            b.bound_memory(4, usize::MAX).await.unwrap();
        }
        assert_eq!(b.sink.staged, 8, "staged at 4 and 8 rows");
        assert_eq!(b.buffered(), (2, 32), "in memory: the last 2 rows");
        assert_eq!(b.due_size(), (10, 32), "due by rows: all 10");
        let policy = super::super::flush::FlushPolicy {
            rows: 10,
            bytes: usize::MAX,
            interval: std::time::Duration::from_secs(60),
            idle: None,
        };
        let now = std::time::Instant::now();
        assert!(policy.due(Some(now), now, now, b.due_size()));
        assert!(!policy.due(Some(now), now, now, b.buffered()));
        let done = b.commit("app").await.unwrap();
        assert_eq!((done.rows, b.due_size()), (10, (0, 0)));
    }

    #[tokio::test]
    async fn a_flush_commits_every_pending_table_at_its_highest_commit_lsn() {
        let mut tables: BTreeMap<_, _> = ["a", "b"]
            .into_iter()
            .map(|t| (id(t), TableBatch::resume(MemorySink::default(), Lsn::ZERO)))
            .collect();
        apply(&mut tables, &stream(), 0);
        assert_eq!(flush(&mut tables).await.unwrap(), ["a@0/12C", "b@0/12C"]);
        assert_eq!(values(&tables[&id("a")].sink.committed), ["a1", "a2", "a3"]);
        assert_eq!(values(&tables[&id("b")].sink.committed), ["b1", "b2", "b3"]);
        // Nothing pending: the next flush commits nothing.
        assert!(flush(&mut tables).await.unwrap().is_empty());
    }

    /// The exactly-once argument in small: table `b`'s commit fails after
    /// `a`'s succeeded, so nothing is acknowledged; the slot sends every
    /// transaction again; `a` skips what it holds, `b` applies everything.
    #[tokio::test]
    async fn a_restart_after_a_commit_that_failed_half_way_gives_each_change_once() {
        let mut tables: BTreeMap<_, _> = ["a", "b"]
            .into_iter()
            .map(|t| (id(t), TableBatch::resume(MemorySink::default(), Lsn::ZERO)))
            .collect();
        apply(&mut tables, &stream(), 0);
        tables.get_mut(&id("b")).unwrap().sink.fail_next_commit = true;
        let err = flush(&mut tables).await.unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        assert_eq!(tables[&id("a")].sink.position, Some(Lsn::new(300)));
        assert_eq!(tables[&id("b")].sink.position, None, "the fault fired");

        // Restart: each table resumes at its recorded position, buffers are
        // gone, and the slot sends everything after the acknowledged 0.
        let mut restarted: BTreeMap<_, _> = tables
            .into_iter()
            .map(|(id, b)| {
                let at = b.sink.position.unwrap_or(Lsn::ZERO);
                let sink = MemorySink {
                    committed: b.sink.committed,
                    position: b.sink.position,
                    ..MemorySink::default()
                };
                (id, TableBatch::resume(sink, at))
            })
            .collect();
        apply(&mut restarted, &stream(), 0);
        assert_eq!(flush(&mut restarted).await.unwrap(), ["b@0/12C"]);
        assert_eq!(
            values(&restarted[&id("a")].sink.committed),
            ["a1", "a2", "a3"]
        );
        assert_eq!(
            values(&restarted[&id("b")].sink.committed),
            ["b1", "b2", "b3"]
        );
    }

    #[tokio::test]
    async fn a_commit_without_rows_keeps_the_position_and_a_discard_drops_the_batch() {
        let mut b = TableBatch::resume(MemorySink::default(), Lsn::new(500));
        assert!(b.holds(Lsn::new(500)) && !b.holds(Lsn::new(501)));
        let done = b.commit("app").await.unwrap();
        assert_eq!(done.position, Lsn::new(500), "never back to 0");
        assert_eq!(done.rows, 0);

        b.append(meta(600, 1), &[Value::Text(b"x")]).unwrap();
        b.discard();
        assert!(!b.sink.has_pending());
        let done = b.commit("app").await.unwrap();
        assert_eq!((done.position, done.rows), (Lsn::new(500), 0));
        assert!(!b.holds(Lsn::new(600)), "a discarded change is not held");
    }
}
