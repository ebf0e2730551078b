//! Bronze compaction in `medallion run`: the writer's small files rewritten
//! into larger ones as they accumulate, beside the stream.
//!
//! ```text
//!  bronze writer ── commit ──► commits attempted, per table (in process)
//!        └─ ack ──► Acknowledged ──► compactor wakes (one pass a second at most)
//!  compactor: each table with `compact_small_files` commits since its last pass
//!        └─► size-tiered compaction: one Delta commit per bin, dataChange = false,
//!            no txn; on the newest version, only while its files are all there
//!        └─► one more compaction counted under the table's commit lock
//!  bronze writer: commits under the same lock; reads the log first when a
//!        compaction committed (current version, current files)
//! ```
//!
//! Every commit of the writer adds a file, so a table written five times a
//! second (a 200 ms flush interval) gains 18,000 files an hour. Readers list
//! and open every file; the compactor keeps their number bounded without an
//! operator's schedule. It never blocks the stream: it runs in its own task
//! and its commits only add and remove files that hold the same rows, so
//! the writer's appends never conflict with it. What makes concurrent
//! compaction safe where Delta's conflict check cannot see a problem (a
//! replacing commit, two compactions of the same files) is in
//! [`crate::optimize`] and [`crate::bronze::BronzeTable::commit`].
//!
//! A failed pass never stops anything: it is logged, counted in
//! `medallion_bronze_compactions{outcome="failed"}`, and the table is tried
//! again after as many commits more. `medallion optimize` still compacts to
//! the target size and vacuums.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::DeltaTable;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::config::Config;
use crate::error::{Result, RetryPolicy};
use crate::lake::Lake;
use crate::metrics::Metrics;
use crate::optimize::{Compaction, Selection, compact};
use crate::replicate::Acknowledged;

/// Target size of the files the compactor writes (as `medallion optimize`'s default).
const TARGET_BYTES: u64 = 128 << 20;

/// At most one pass in this interval, however often the writer commits.
const PASS_EVERY: Duration = Duration::from_secs(1);

/// A pass also runs this long after the last one when nothing woke it.
const IDLE_PASS_EVERY: Duration = Duration::from_secs(10);

/// How one table's pass ended (the `outcome` label of
/// `medallion_bronze_compactions`).
pub const OUTCOMES: [&str; 4] = ["compacted", "nothing", "retry", "failed"];

/// Compact the bronze tables this process writes until `shutdown`
/// (nothing when `compact_small_files` is 0).
pub async fn run_loop(
    cfg: &Config,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    acknowledged: Acknowledged,
) -> Result<()> {
    let min_small = cfg.compact_small_files;
    if min_small == 0 {
        return Ok(());
    }
    let lake = Lake::from_config(cfg)?;
    let mut commits = acknowledged.subscribe();
    let mut compactor = Compactor {
        lake: &lake,
        metrics: &metrics,
        min_small,
        passed_at: HashMap::new(),
        tables: HashMap::new(),
    };
    let mut last_pass = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(IDLE_PASS_EVERY) => {}
            changed = commits.changed() => if changed.is_err() {
                // The writer is gone: only the timer wakes us from now on.
                commits = acknowledged.subscribe();
            },
        }
        let since = last_pass.elapsed();
        if since < PASS_EVERY {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(PASS_EVERY - since) => {}
            }
        }
        last_pass = Instant::now();
        compactor.pass(&shutdown).await;
    }
}

/// The compactor's state between passes.
struct Compactor<'a> {
    lake: &'a Lake,
    metrics: &'a Metrics,
    min_small: usize,
    /// Commits attempted on each table when its last pass ended.
    passed_at: HashMap<Url, u64>,
    /// Tables kept open between passes (read forward from their version).
    tables: HashMap<Url, DeltaTable>,
}

impl Compactor<'_> {
    /// One pass: every table with `min_small` commits since its last one.
    async fn pass(&mut self, shutdown: &CancellationToken) {
        let root = self.lake.root().as_str();
        for (url, commits) in crate::bronze::commits_attempted() {
            if shutdown.is_cancelled() {
                return;
            }
            if !url.as_str().starts_with(root) {
                continue;
            }
            let passed = self.passed_at.get(&url).copied().unwrap_or(0);
            if commits.saturating_sub(passed) < self.min_small as u64 {
                continue;
            }
            let (outcome, files) = match self.compact_table(&url).await {
                Ok(done) if done.compacted > 0 => {
                    tracing::info!(
                        table = %url,
                        before = done.before,
                        compacted = done.compacted,
                        written = done.written,
                        "bronze compacted"
                    );
                    ("compacted", done.compacted as u64)
                }
                Ok(_) => ("nothing", 0),
                Err(e) => {
                    self.tables.remove(&url);
                    if e.retry_policy() == RetryPolicy::RetryOnTimer {
                        tracing::info!(table = %url, error = %e, "bronze compaction: transient error; trying again at the next pass");
                        self.metrics.bronze_compaction("retry", 0);
                        continue;
                    }
                    tracing::warn!(table = %url, error = %e, "bronze compaction failed; the stream goes on, and the table is tried again after more commits (`medallion optimize` compacts it too)");
                    ("failed", 0)
                }
            };
            self.metrics.bronze_compaction(outcome, files);
            self.passed_at.insert(url, commits);
        }
    }

    async fn compact_table(&mut self, url: &Url) -> Result<Compaction> {
        let table = match self.tables.remove(url) {
            Some(t) => t,
            None => match self.lake.open(url).await? {
                Some(t) => t,
                None => return Ok(Compaction::default()),
            },
        };
        let mut table = table;
        table
            .update_state()
            .await
            .map_err(crate::error::Error::delta(format!("reload {url}")))?;
        let done = compact(
            &mut table,
            url,
            self.lake.storage(),
            TARGET_BYTES,
            self.min_small,
            Selection::SizeTiered,
        )
        .await?;
        self.tables.insert(url.clone(), table);
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bronze::{BronzeTable, Op, RowMeta, TableId, Value};
    use crate::lsn::Lsn;
    use crate::typemap::Kind;
    use deltalake::kernel::Transaction;

    fn columns() -> Vec<(String, Kind)> {
        vec![("id".to_string(), Kind::Int32)]
    }

    async fn lake_with_table(dir: &tempfile::TempDir) -> (Lake, BronzeTable, Url) {
        let cfg = Config {
            lake_url: dir.path().display().to_string(),
            ..Config::default()
        };
        let lake = Lake::from_config(&cfg).expect("lake");
        let id = TableId::new("public", "t");
        let table = BronzeTable::open_or_create(&lake, &id, &columns())
            .await
            .expect("bronze table");
        let url = lake.bronze_url(&id).expect("url");
        (lake, table, url)
    }

    /// One commit of rows `ids`, as the writer makes it.
    async fn commit(t: &mut BronzeTable, op: Op, ids: std::ops::RangeInclusive<i32>, lsn: i64) {
        for id in ids {
            let text = id.to_string();
            t.append(
                RowMeta {
                    op,
                    lsn: Lsn::from_lake(lsn),
                    seq: i64::from(id),
                    commit_ts_us: 0,
                    xid: 1,
                },
                &[Value::Text(text.as_bytes())],
            )
            .expect("append");
        }
        t.commit(vec![Transaction::new("test", lsn)], Vec::new())
            .await
            .expect("commit");
    }

    /// Rows per operation in the table's current version: op, rows, distinct ids.
    async fn contents(lake: &Lake, url: &Url) -> String {
        let table = lake.open(url).await.expect("open").expect("table");
        crate::lake::query_text(
            &table,
            "SELECT _mdl_op AS op, count(*) AS n, count(DISTINCT id) AS ids FROM t GROUP BY 1 ORDER BY 1",
        )
        .await
    }

    async fn files(lake: &Lake, url: &Url) -> usize {
        lake.open(url)
            .await
            .expect("open")
            .expect("table")
            .snapshot()
            .expect("snapshot")
            .log_data()
            .num_files()
    }

    fn parquet_files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .expect("table directory")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
            })
            .count()
    }

    #[tokio::test]
    async fn a_replacing_commit_after_another_processs_compaction_keeps_only_the_new_generation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (lake, mut writer, url) = lake_with_table(&dir).await;
        for id in 1..=20 {
            commit(&mut writer, Op::Snapshot, id..=id, 100 + i64::from(id)).await;
        }
        // Another process's `medallion optimize` compacts the table: its
        // writer is not told, and its state is one version behind.
        let mut other = lake.open(&url).await.expect("open").expect("table");
        let done = compact(
            &mut other,
            &url,
            lake.storage(),
            TARGET_BYTES,
            2,
            Selection::AllSmall,
        )
        .await
        .expect("compaction");
        assert_eq!(done.compacted, 20);
        writer.overlook_compactions().await;
        assert!(
            writer.version() < other.version().map(|v| v as i64),
            "the writer's state is behind the compaction ({:?} < {:?})",
            writer.version(),
            other.version()
        );
        // A resync: the next commit replaces every file with the new copy.
        writer.replace_with(&columns());
        commit(&mut writer, Op::Snapshot, 1..=5, 500).await;
        let got = contents(&lake, &url).await;
        assert!(
            got.contains("| snapshot | 5 | 5   |"),
            "only the new generation's 5 rows are left:\n{got}"
        );
    }

    #[tokio::test]
    async fn two_compactions_of_the_same_files_keep_each_row_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (lake, mut writer, url) = lake_with_table(&dir).await;
        for id in 1..=12 {
            commit(&mut writer, Op::Insert, id..=id, 100 + i64::from(id)).await;
        }
        // Two compactions (say `medallion optimize` and the compactor of
        // `medallion run`) read the same version.
        let mut first = lake.open(&url).await.expect("open").expect("table");
        let mut second = lake.open(&url).await.expect("open").expect("table");
        let early = compact(
            &mut first,
            &url,
            lake.storage(),
            TARGET_BYTES,
            2,
            Selection::AllSmall,
        )
        .await
        .expect("first");
        assert_eq!(early.compacted, 12);
        let late = compact(
            &mut second,
            &url,
            lake.storage(),
            TARGET_BYTES,
            2,
            Selection::AllSmall,
        )
        .await
        .expect("second");
        assert_eq!(late.compacted, 0, "the second finds its files gone");
        let got = contents(&lake, &url).await;
        assert!(
            got.contains("| insert | 12 | 12  |"),
            "every row once:\n{got}"
        );
        let table_dir = dir.path().join("bronze/public/t");
        assert_eq!(
            parquet_files(&table_dir),
            13,
            "12 small files and the first compaction's; the second's was deleted"
        );
    }

    #[tokio::test]
    async fn the_compactor_takes_a_table_after_enough_commits_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (lake, mut writer, url) = lake_with_table(&dir).await;
        let metrics = Metrics::default();
        let mut compactor = Compactor {
            lake: &lake,
            metrics: &metrics,
            min_small: 4,
            passed_at: HashMap::new(),
            tables: HashMap::new(),
        };
        let shutdown = CancellationToken::new();
        for id in 1..=3 {
            commit(&mut writer, Op::Insert, id..=id, 100 + i64::from(id)).await;
        }
        compactor.pass(&shutdown).await;
        assert_eq!(files(&lake, &url).await, 3, "3 commits: not yet due");
        for id in 4..=6 {
            commit(&mut writer, Op::Insert, id..=id, 100 + i64::from(id)).await;
        }
        compactor.pass(&shutdown).await;
        assert_eq!(
            files(&lake, &url).await,
            1,
            "6 tiny files compacted into one"
        );
        let rendered = metrics.render();
        assert!(
            rendered.contains("medallion_bronze_compactions_total{outcome=\"compacted\"} 1")
                && rendered.contains("medallion_bronze_files_compacted_total 6"),
            "{rendered}"
        );
        // The writer reads the compaction before its next commit.
        let before = writer.version().expect("version");
        commit(&mut writer, Op::Insert, 7..=7, 107).await;
        assert_eq!(
            writer.version(),
            Some(before + 2),
            "the compaction's version, then the writer's"
        );
        assert_eq!(files(&lake, &url).await, 2);
        // 1 commit since the pass: not due again.
        compactor.pass(&shutdown).await;
        assert_eq!(files(&lake, &url).await, 2);
        let got = contents(&lake, &url).await;
        assert!(got.contains("| insert | 7 | 7   |"), "{got}");
    }
}
