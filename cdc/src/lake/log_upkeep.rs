//! The upkeep of a table's Delta log after medallion's routine commits:
//! checkpoints and the cleanup of expired entries, both off the commit's
//! path.
//!
//! ```text
//!  writer ── commit v ──► after_commit(table at v) ──► returns at once
//!                              │ due? (v ≥ last checkpoint + interval)
//!                              ▼
//!                  task per table: rest (9× the last checkpoint's CPU), then
//!                  checkpoint the newest due version ── then the hourly cleanup
//!                  (one at a time; a commit due meanwhile is checkpointed next)
//! ```
//!
//! delta-rs writes a checkpoint inside the commit that reaches
//! `delta.checkpointInterval`, so every tenth commit of a busy table waits
//! for it: replaying the log since the last checkpoint and writing every
//! live file and every tombstone within the retention again (about 7 µs a
//! tombstone: 0.15 s with 21,600 of them, `medallion-bench tombstones`).
//! The bronze writer holds its table's commit lock and the next batch
//! meanwhile, so that cost landed on bronze freshness's tail. Routine
//! commits therefore write no checkpoint ([`routine_commit`]) and
//! [`after_commit`] writes it in a task of its own.
//!
//! A table's checkpoints take at most about a tenth of a core
//! ([`CHECKPOINT_CORE_SHARE`]): after one during which the process spent
//! `c` of CPU time, the next waits `9 c` (at most [`REST_MAX`]) and then
//! writes the newest version due. A checkpoint's cost grows with the
//! tombstones in the retention, not with the commits since the last: a busy
//! table committed every 200 ms with 604,800 tombstones (Delta's week at one
//! removed file a second) spent a quarter of a core on checkpoints at one
//! every tenth commit, and a tenth resting (`medallion-bench tombstones
//! --busy-seconds`). The process' CPU time counts its other work too, which
//! only lengthens the rest. Cheap checkpoints (a few ms, most tables; about
//! 0.1 s with the 6-hour default's 108,000 at a 200 ms flush) are not held
//! back.
//!
//! A checkpoint is never needed for correctness: readers replay the commits
//! since the last one. A checkpoint that fails is logged and the next due
//! commit tries again. A process killed while writing one leaves no partial
//! file (object stores and the local store publish a file whole).
//!
//! These tasks run on the runtime of the commit that started them, and the
//! Delta kernel blocks on that runtime while it writes: a runtime that
//! ends under a checkpoint being written makes the kernel's thread panic
//! (`TokioMultiThreadExecutor has crashed`). So a process (or a test, or a
//! benchmark that makes a runtime per cycle) calls [`settle_upkeep`] before its
//! runtime ends: tasks resting give up their checkpoint, those writing one
//! finish it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use deltalake::DeltaTable;
use deltalake::kernel::Version;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::table::config::TablePropertiesExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

use crate::error::{Error, Result};

/// The properties of medallion's routine commits (bronze appends, silver
/// MERGEs, gold writes, compactions, vacuums):
///
/// - no checkpoint inside the commit: [`after_commit`] writes it in a task
///   of its own (the module's doc says why);
/// - no cleanup of expired log entries after each commit. That cleanup
///   lists the whole `_delta_log` directory every time, so a commit's cost
///   grew with the log (about 95,000 entries a day for a table committed
///   to once a second, kept 30 days): 2–3 s per commit beside 200,000
///   entries in a debug build. [`clean_log`] does it at most once an hour
///   per table instead.
pub fn routine_commit() -> CommitProperties {
    CommitProperties::default()
        .with_create_checkpoint(false)
        .with_cleanup_expired_logs(Some(false))
}

/// What a routine commit leaves to do, off its path: the table's checkpoint
/// when one is due and the hourly cleanup of its expired log entries, in a
/// task of its own. `table` is the table as the commit left it. Returns at
/// once; failures are logged and retried by a later commit.
pub fn after_commit(table: &DeltaTable, url: &Url) {
    if let Err(e) = checkpoint_when_due(table, url) {
        tracing::warn!(table = %url, error = %e, "cannot tell whether a checkpoint is due; a later commit tries again");
    }
    clean_log_hourly(table, url);
}

/// The share of one core a table's checkpoints may take: after a
/// checkpoint during which the process spent `c` of CPU time, the table's
/// next one waits until `c × (1 − share) / share` has passed (see
/// [`rest_after`]).
pub const CHECKPOINT_CORE_SHARE: f64 = 0.1;

/// The longest rest between a table's checkpoints: a fresh reader replays
/// at most about this much of its commits.
const REST_MAX: Duration = Duration::from_secs(60);

/// [`CHECKPOINT_CORE_SHARE`], as `f64` bits; benchmarks change it.
static CORE_SHARE: AtomicU64 = AtomicU64::new(CHECKPOINT_CORE_SHARE.to_bits());

/// Set the share of a core a table's checkpoints may take in this process
/// (`1.0`: no rest between them, delta-rs's cadence). For benchmarks that
/// time one checkpoint after another; the sidecar keeps
/// [`CHECKPOINT_CORE_SHARE`].
#[doc(hidden)]
pub fn set_checkpoint_core_share(share: f64) {
    CORE_SHARE.store(share.clamp(0.01, 1.0).to_bits(), Ordering::Relaxed);
}

/// How long a table rests after a checkpoint during which the process spent
/// `cpu`, so that its checkpoints take at most `share` of a core.
fn rest_after(cpu: Duration, share: f64) -> Duration {
    cpu.mul_f64((1.0 - share) / share).min(REST_MAX)
}

/// The upkeep tasks of this process: spawned through `tracker`, and told
/// by `closing` that the runtime is about to end ([`settle_upkeep`]).
struct Upkeep {
    tracker: TaskTracker,
    closing: CancellationToken,
}

static UPKEEP: LazyLock<Mutex<Upkeep>> = LazyLock::new(|| {
    Mutex::new(Upkeep {
        tracker: TaskTracker::new(),
        closing: CancellationToken::new(),
    })
});

fn upkeep() -> std::sync::MutexGuard<'static, Upkeep> {
    UPKEEP.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spawn an upkeep task on the current runtime, tracked for [`settle_upkeep`];
/// it gets the token that tells it the runtime is ending.
fn spawn_upkeep<F>(task: impl FnOnce(CancellationToken) -> F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let u = upkeep();
    u.tracker.spawn(task(u.closing.clone()));
}

/// Before the runtime that made routine commits ends: checkpoints waiting
/// for their table's rest are given up (readers replay the log; the next
/// process checkpoints by delta-rs's rule), and the checkpoints and log
/// cleanups under way are waited for, at most `within`. Returns whether
/// every task ended in time; one that did not is logged, and the kernel's
/// thread may then panic as the runtime ends. Tasks spawned after this call
/// are tracked afresh (a benchmark's next runtime).
pub async fn settle_upkeep(within: Duration) -> bool {
    let (tracker, closing) = {
        let mut u = upkeep();
        let old = std::mem::replace(
            &mut *u,
            Upkeep {
                tracker: TaskTracker::new(),
                closing: CancellationToken::new(),
            },
        );
        (old.tracker, old.closing)
    };
    closing.cancel();
    tracker.close();
    let ended = tokio::time::timeout(within, tracker.wait()).await.is_ok();
    if !ended {
        tracing::warn!(
            tasks = tracker.len(),
            "a Delta log checkpoint or cleanup is still running as the process ends; it is abandoned (readers replay the log, and a later commit checkpoints again)"
        );
    }
    ended
}

/// Checkpoints of one table in this process.
#[derive(Default)]
struct Checkpoints {
    /// The version last checkpointed (or attempted) in this process; before
    /// the first, the last version checkpointed by delta-rs's rule (see
    /// [`due`]).
    last: Option<Version>,
    /// A task is writing one.
    running: bool,
    /// The newest table state that became due while the task ran.
    pending: Option<DeltaTable>,
    /// No checkpoint before this: the rest after the last one
    /// ([`rest_after`]).
    not_before: Option<tokio::time::Instant>,
}

static CHECKPOINTS: LazyLock<Mutex<HashMap<Url, Checkpoints>>> = LazyLock::new(Default::default);

fn checkpoints() -> std::sync::MutexGuard<'static, HashMap<Url, Checkpoints>> {
    CHECKPOINTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether version `v` needs a checkpoint, `last` being the version last
/// checkpointed in this process. Before the first, delta-rs's own rule
/// stands: every `interval`-th version (`v + 1` a multiple of it), so a
/// restarted writer neither checkpoints at once nor skips one. After it:
/// `interval` versions on, whoever committed the versions between (a
/// compaction, `optimize`, another process), so none is missed. A version
/// below `last` is a table created anew at the same place: the rule again.
fn due(v: Version, last: Option<Version>, interval: u64) -> bool {
    match last {
        Some(last) if v >= last => v >= last + interval,
        _ => (v + 1).is_multiple_of(interval),
    }
}

/// The version delta-rs's rule last checkpointed at or before `v` (or
/// `None` before the first): where [`due`] counts from when this process
/// first sees a table.
fn last_by_rule(v: Version, interval: u64) -> Option<Version> {
    let behind = (v + 1) % interval;
    (v + 1 >= interval + behind).then(|| v - behind)
}

fn checkpoint_when_due(table: &DeltaTable, url: &Url) -> Result<()> {
    let snapshot = table.snapshot().map_err(Error::delta("snapshot"))?;
    let v = snapshot.version() as Version;
    let interval = snapshot.table_config().checkpoint_interval().get();
    let mut all = checkpoints();
    let state = all.entry(url.clone()).or_default();
    if !due(v, state.last, interval) {
        if state.last.is_none_or(|last| v < last) {
            state.last = last_by_rule(v, interval);
        }
        return Ok(());
    }
    if state.running {
        state.pending = Some(table.clone());
        return Ok(());
    }
    state.running = true;
    let (table, url) = (table.clone(), url.clone());
    spawn_upkeep(|closing| checkpoint_task(table, url, interval, closing));
    Ok(())
}

/// Ends a table's checkpoint task in its state however the task ends
/// without returning: a panic (in the kernel, say), its runtime ending
/// under it, or [`settle_upkeep`] during its rest. The next due commit then starts
/// another instead of waiting for one that is gone.
/// A task that returns ends itself and disarms it.
struct EndOnDrop {
    url: Url,
    armed: bool,
}

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        if self.armed
            && let Some(state) = checkpoints().get_mut(&self.url)
        {
            state.running = false;
            state.pending = None;
        }
    }
}

/// Write `table`'s checkpoint once the table's rest is over (the newest
/// state due by then), then any that became due meanwhile; give up at
/// `closing` (see [`settle_upkeep`]) unless one is being written.
async fn checkpoint_task(
    mut table: DeltaTable,
    url: Url,
    interval: u64,
    closing: CancellationToken,
) {
    let mut end = EndOnDrop {
        url: url.clone(),
        armed: true,
    };
    loop {
        if closing.is_cancelled() {
            tracing::debug!(table = %url, "the process is ending: the due checkpoint is left to a later commit");
            return;
        }
        let not_before = checkpoints().get(&url).and_then(|s| s.not_before);
        if let Some(at) = not_before.filter(|at| *at > tokio::time::Instant::now()) {
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = closing.cancelled() => {
                    tracing::debug!(table = %url, "the process is ending: the checkpoint waiting for its rest is left to a later commit");
                    return;
                }
            }
            // Commits made during the rest handed over newer states.
            if let Some(newer) = checkpoints().get_mut(&url).and_then(|s| s.pending.take()) {
                table = newer;
            }
        }
        let v = table.version().unwrap_or_default();
        crate::fault::pause(crate::fault::BEFORE_CHECKPOINT).await;
        #[cfg(test)]
        tests::at_the_write(&url).await;
        let (started, cpu) = (Instant::now(), crate::metrics::process_cpu_time());
        let written = deltalake::protocol::checkpoints::create_checkpoint(&table, None).await;
        let share = f64::from_bits(CORE_SHARE.load(Ordering::Relaxed));
        let rest = rest_after(
            crate::metrics::process_cpu_time().saturating_sub(cpu),
            share,
        );
        match written {
            Ok(()) => {
                tracing::debug!(table = %url, version = v, took = ?started.elapsed(), ?rest, "checkpoint written; the next waits for the rest")
            }
            Err(e) => {
                tracing::warn!(table = %url, version = v, error = %e,
                    "writing a checkpoint failed; readers replay the commits since the last one, and the next due commit tries again")
            }
        }
        let mut all = checkpoints();
        let state = all.entry(url.clone()).or_default();
        state.last = Some(v);
        state.not_before = Some(tokio::time::Instant::now() + rest);
        match state.pending.take() {
            Some(next) if next.version().is_some_and(|n| due(n, state.last, interval)) => {
                table = next;
            }
            _ => {
                state.running = false;
                end.armed = false;
                return;
            }
        }
    }
}

/// Whether no checkpoint of `url` is being written (tests wait for it).
#[cfg(test)]
pub(crate) fn checkpoints_idle(url: &Url) -> bool {
    !checkpoints().get(url).is_some_and(|s| s.running)
}

/// At most one cleanup of a table's expired log entries per this interval
/// in a process ([`LogCleanup::Hourly`]).
const LOG_CLEANUP_INTERVAL: Duration = Duration::from_secs(3600);

/// When [`clean_log`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogCleanup {
    /// Unless this process cleaned the table's log within the last hour.
    Hourly,
    /// Now (`medallion optimize`).
    Now,
}

/// Delete `table`'s log entries that are older than its
/// `delta.logRetentionDuration` (30 days unless set) and that no version
/// within it needs (delta-rs's cleanup, which keeps everything from the
/// newest checkpoint before the cutoff on); nothing when the table turns
/// cleanup off (`delta.enableExpiredLogCleanup = false`). Returns the
/// entries deleted.
pub(crate) async fn clean_log(table: &DeltaTable, url: &Url, when: LogCleanup) -> Result<usize> {
    match log_cleanup(table, url, when)? {
        Some(cleanup) => cleanup.run().await,
        None => Ok(0),
    }
}

/// [`clean_log`] hourly after a routine commit, in a task of its own: the
/// cleanup lists the whole log, and the commit's caller (the bronze writer,
/// the refiner) does not wait for it. A failure is logged; the commit
/// stands, and the next hour tries again.
fn clean_log_hourly(table: &DeltaTable, url: &Url) {
    match log_cleanup(table, url, LogCleanup::Hourly) {
        Ok(Some(cleanup)) => spawn_upkeep(|_closing| async move {
            if let Err(e) = cleanup.run().await {
                tracing::warn!(error = %e, "cleaning expired log entries failed; tried again in an hour");
            }
        }),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(table = %url, error = %e, "cleaning expired log entries failed; tried again in an hour")
        }
    }
}

/// One cleanup of a table's expired log entries, due now.
struct PendingCleanup {
    url: Url,
    log_store: deltalake::logstore::LogStoreRef,
    version: Version,
    cutoff_ms: i64,
}

impl PendingCleanup {
    async fn run(self) -> Result<usize> {
        let cleaned = deltalake::protocol::checkpoints::cleanup_expired_logs_for(
            self.version,
            self.log_store.as_ref(),
            self.cutoff_ms,
            None,
        )
        .await
        .map_err(Error::delta(format!("clean the log of {}", self.url)))?;
        if cleaned > 0 {
            tracing::debug!(table = %self.url, cleaned, "expired log entries deleted");
        }
        Ok(cleaned)
    }
}

/// The cleanup of `table`'s log when it is due (`when`, marked as done for
/// the hour) and the table allows it.
fn log_cleanup(table: &DeltaTable, url: &Url, when: LogCleanup) -> Result<Option<PendingCleanup>> {
    static LAST: LazyLock<Mutex<HashMap<Url, Instant>>> = LazyLock::new(Default::default);
    {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if when == LogCleanup::Hourly
            && last
                .get(url)
                .is_some_and(|t| now.duration_since(*t) < LOG_CLEANUP_INTERVAL)
        {
            return Ok(None);
        }
        last.insert(url.clone(), now);
    }
    let snapshot = table.snapshot().map_err(Error::delta("snapshot"))?;
    let config = snapshot.table_config();
    if !config.enable_expired_log_cleanup() {
        return Ok(None);
    }
    Ok(Some(PendingCleanup {
        url: url.clone(),
        log_store: table.log_store(),
        version: snapshot.version() as Version,
        cutoff_ms: chrono::Utc::now().timestamp_millis()
            - config.log_retention_duration().as_millis() as i64,
    }))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use arrow::array::{Int32Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
    use deltalake::protocol::SaveMode;

    use super::*;
    use crate::lake::{Lake, collect, register, session};

    /// The tests that watch checkpoints run one at a time: [`settle_upkeep`]
    /// gives up every resting checkpoint of the process.
    async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
        static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        SERIAL.lock().await
    }

    /// Where a table's checkpoint task stops right before writing, when a
    /// test holds it there ([`hold_writes`]).
    struct Gate {
        arrived: tokio::sync::Notify,
        go: tokio::sync::Notify,
    }

    static GATES: LazyLock<Mutex<HashMap<Url, Arc<Gate>>>> = LazyLock::new(Default::default);

    fn hold_writes(url: &Url) -> Arc<Gate> {
        let gate = Arc::new(Gate {
            arrived: tokio::sync::Notify::new(),
            go: tokio::sync::Notify::new(),
        });
        GATES
            .lock()
            .expect("gates")
            .insert(url.clone(), gate.clone());
        gate
    }

    pub(super) async fn at_the_write(url: &Url) {
        let gate = GATES.lock().expect("gates").remove(url);
        if let Some(gate) = gate {
            gate.arrived.notify_one();
            gate.go.notified().await;
        }
    }

    #[test]
    fn a_checkpoint_is_due_every_interval_versions_whoever_committed_between() {
        // Before this process wrote one: delta-rs's rule (versions 9, 19, …).
        assert!(!due(8, None, 10));
        assert!(due(9, None, 10));
        assert!(!due(10, None, 10));
        assert!(due(19, None, 10));
        // After: ten versions on, even when another writer's commit took
        // version 19 (a compaction) and this one is first called at 20.
        assert!(!due(18, Some(9), 10));
        assert!(due(19, Some(9), 10));
        assert!(due(20, Some(9), 10));
        // A table created anew where one was: the rule again.
        assert!(!due(3, Some(50), 10));
        assert!(due(9, Some(50), 10));
        // Where a table first seen counts from.
        assert_eq!(last_by_rule(0, 10), None);
        assert_eq!(last_by_rule(8, 10), None);
        assert_eq!(last_by_rule(9, 10), Some(9));
        assert_eq!(last_by_rule(14, 10), Some(9));
        assert_eq!(last_by_rule(25, 10), Some(19));
        assert_eq!(last_by_rule(3, 1), Some(3));
    }

    /// A one-column silver table `t` in a lake of its own.
    struct Fixture {
        _dir: tempfile::TempDir,
        lake: Lake,
        url: Url,
        log: PathBuf,
        schema: SchemaRef,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().expect("dir");
            let lake = Lake::from_config(&crate::Config {
                lake_url: dir.path().display().to_string(),
                ..crate::Config::default()
            })
            .expect("lake");
            Fixture {
                url: lake.refined_url("silver", "t").expect("url"),
                log: dir.path().join("silver/t/_delta_log"),
                schema: Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false)])),
                lake,
                _dir: dir,
            }
        }

        fn batch(&self, id: i32) -> RecordBatch {
            RecordBatch::try_new(
                self.schema.clone(),
                vec![Arc::new(Int32Array::from(vec![id]))],
            )
            .expect("batch")
        }

        /// Version 0, with row 0 and these properties.
        async fn create(&self, configuration: &[(&str, &str)]) -> DeltaTable {
            self.lake
                .handle(&self.url)
                .expect("handle")
                .write(vec![self.batch(0)])
                .with_configuration(configuration.iter().map(|(k, v)| (*k, Some(*v))))
                .await
                .expect("create")
        }

        async fn write(&self, table: DeltaTable, id: i32, props: CommitProperties) -> DeltaTable {
            table
                .write(vec![self.batch(id)])
                .with_save_mode(SaveMode::Append)
                .with_commit_properties(props)
                .await
                .expect("write")
        }

        fn entry(&self, name: String) -> PathBuf {
            self.log.join(name)
        }

        fn commit(&self, v: u64) -> PathBuf {
            self.entry(format!("{v:020}.json"))
        }

        fn checkpoint(&self, v: u64) -> PathBuf {
            self.entry(format!("{v:020}.checkpoint.parquet"))
        }

        fn entries(&self) -> usize {
            std::fs::read_dir(&self.log).expect("log").count()
        }

        /// Wait (at most 30 s) for the checkpoint task of the table to end.
        async fn checkpoints_written(&self) {
            for _ in 0..300 {
                if checkpoints_idle(&self.url) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the checkpoint task of {} did not end", self.url);
        }

        async fn rows(&self) -> u64 {
            let ctx = session();
            let table = self
                .lake
                .open(&self.url)
                .await
                .expect("open")
                .expect("table");
            register(&ctx, "t", &table).await.expect("register");
            let n = collect(&ctx, "SELECT count(*) FROM t")
                .await
                .expect("count");
            crate::expectations::count_of(&n).expect("count")
        }
    }

    #[test]
    fn checkpoints_rest_nine_times_their_cpu_at_a_tenth_of_a_core() {
        assert_eq!(
            rest_after(Duration::from_millis(100), CHECKPOINT_CORE_SHARE),
            Duration::from_millis(900)
        );
        assert_eq!(
            rest_after(Duration::from_millis(5), 0.5),
            Duration::from_millis(5)
        );
        assert_eq!(rest_after(Duration::from_secs(1), 1.0), Duration::ZERO);
        assert_eq!(
            rest_after(Duration::from_secs(30), CHECKPOINT_CORE_SHARE),
            REST_MAX
        );
        let before = crate::metrics::process_cpu_time();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(
            crate::metrics::process_cpu_time() > before,
            "the process' CPU time did not move"
        );
    }

    /// A checkpoint due while the table rests after the last one waits for
    /// the rest to end, then writes the newest version due, without
    /// another commit.
    #[tokio::test]
    async fn a_checkpoint_due_during_the_rest_is_written_after_it_at_the_newest_version() {
        let _serial = one_at_a_time().await;
        let f = Fixture::new();
        let mut table = f.create(&[("delta.checkpointInterval", "2")]).await;
        table = f.write(table, 1, routine_commit()).await;
        after_commit(&table, &f.url);
        f.checkpoints_written().await;
        assert!(f.checkpoint(1).exists(), "no checkpoint at version 1");
        // As if that checkpoint had taken 0.5 s of CPU: a rest of 4.5 s
        // (long beside the three commits below, even on a loaded host).
        let rest = Duration::from_millis(4500);
        let rested_from = tokio::time::Instant::now();
        checkpoints().get_mut(&f.url).expect("state").not_before = Some(rested_from + rest);
        for id in 2..=4 {
            table = f.write(table, id, routine_commit()).await;
            after_commit(&table, &f.url);
        }
        // Version 3 was due (two on from 1), and 4 handed over meanwhile.
        assert!(
            rested_from.elapsed() < rest,
            "the commits outlasted the rest"
        );
        assert!(!checkpoints_idle(&f.url), "no checkpoint is waiting");
        assert!(
            !f.checkpoint(3).exists() && !f.checkpoint(4).exists(),
            "a checkpoint was written during the rest"
        );
        f.checkpoints_written().await;
        assert!(
            rested_from.elapsed() >= rest,
            "the checkpoint task ended before the rest did"
        );
        assert!(
            f.checkpoint(4).exists(),
            "no checkpoint of the newest version after the rest"
        );
        assert!(
            !f.checkpoint(3).exists(),
            "the older due version was checkpointed too"
        );
        assert_eq!(f.rows().await, 5);
    }

    /// Before a runtime ends, [`settle_upkeep`] waits for a checkpoint
    /// being written and gives up one waiting for its table's rest; a task
    /// whose runtime ends under it leaves the table free for the next due
    /// commit (it used to stay "running" for the rest of the process).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn settling_waits_for_checkpoints_being_written_and_gives_up_resting_ones() {
        let _serial = one_at_a_time().await;
        let f = Fixture::new();
        let mut table = f.create(&[("delta.checkpointInterval", "2")]).await;

        // Being written: settling waits until it is.
        let gate = hold_writes(&f.url);
        table = f.write(table, 1, routine_commit()).await;
        after_commit(&table, &f.url);
        gate.arrived.notified().await;
        let settling = tokio::spawn(settle_upkeep(Duration::from_secs(30)));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !settling.is_finished(),
            "settled with a checkpoint being written"
        );
        assert!(!f.checkpoint(1).exists());
        gate.go.notify_one();
        assert!(settling.await.expect("settle"), "not settled in time");
        assert!(
            f.checkpoint(1).exists(),
            "settled before the checkpoint being written was written"
        );
        assert!(checkpoints_idle(&f.url));

        // Resting (as if the last checkpoint had cost 6 s of CPU): given up
        // at once, nothing written, the table free again.
        checkpoints().get_mut(&f.url).expect("state").not_before =
            Some(tokio::time::Instant::now() + Duration::from_secs(60));
        for id in 2..=3 {
            table = f.write(table, id, routine_commit()).await;
            after_commit(&table, &f.url);
        }
        assert!(!checkpoints_idle(&f.url), "no checkpoint is resting");
        let started = Instant::now();
        assert!(settle_upkeep(Duration::from_secs(30)).await);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "settling waited for the rest"
        );
        assert!(checkpoints_idle(&f.url));
        assert!(
            !f.checkpoint(3).exists(),
            "the resting checkpoint was written"
        );

        // A runtime that ends under a resting task, without settling.
        let (t, url) = (table.clone(), f.url.clone());
        let left_running = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async { after_commit(&t, &url) });
            let resting = !checkpoints_idle(&url);
            drop(rt);
            (resting, !checkpoints_idle(&url))
        })
        .join()
        .expect("thread");
        assert_eq!(
            left_running,
            (true, false),
            "(resting before the runtime ended, still running after it)"
        );

        // The next due commit checkpoints.
        checkpoints().get_mut(&f.url).expect("state").not_before = None;
        table = f.write(table, 4, routine_commit()).await;
        after_commit(&table, &f.url);
        f.checkpoints_written().await;
        assert!(f.checkpoint(4).exists(), "no checkpoint at version 4");
        drop(table);
        assert_eq!(f.rows().await, 5);
    }

    /// A routine commit returns without writing the checkpoint it made due;
    /// [`after_commit`]'s task writes it, and the next one `interval`
    /// versions on, whoever made the versions between.
    #[tokio::test]
    async fn routine_commits_leave_checkpoints_to_a_task_of_their_own() {
        let _serial = one_at_a_time().await;
        let f = Fixture::new();
        let mut table = f.create(&[("delta.checkpointInterval", "5")]).await;
        for id in 1..=4 {
            table = f.write(table, id, routine_commit()).await;
        }
        // Version 4 reached the interval: delta-rs would have written the
        // checkpoint before returning.
        assert!(f.commit(4).exists());
        assert!(
            !f.checkpoint(4).exists(),
            "a routine commit wrote a checkpoint"
        );
        after_commit(&table, &f.url);
        f.checkpoints_written().await;
        assert!(f.checkpoint(4).exists(), "no checkpoint at version 4");
        // Versions 5 to 9 by another writer that leaves no checkpoint (a
        // compaction in another process): version 10, the first this
        // process sees, is five versions on, so due (delta-rs's rule would
        // wait for 14).
        for id in 5..=9 {
            table = f.write(table, id, routine_commit()).await;
        }
        table = f.write(table, 10, routine_commit()).await;
        after_commit(&table, &f.url);
        f.checkpoints_written().await;
        assert!(f.checkpoint(10).exists(), "no checkpoint at version 10");
        assert!(!f.checkpoint(9).exists());
        // Not again until 15.
        for id in 11..=14 {
            table = f.write(table, id, routine_commit()).await;
            after_commit(&table, &f.url);
            f.checkpoints_written().await;
        }
        let checkpoints = std::fs::read_dir(&f.log)
            .expect("log")
            .filter(|e| {
                e.as_ref().is_ok_and(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .ends_with(".checkpoint.parquet")
                })
            })
            .count();
        assert_eq!(checkpoints, 2);
        let last: serde_json::Value = serde_json::from_slice(
            &std::fs::read(f.entry("_last_checkpoint".into())).expect("_last_checkpoint"),
        )
        .expect("json");
        assert_eq!(last["version"], 10);
        drop(table);
        assert_eq!(f.rows().await, 15);
    }

    #[tokio::test]
    async fn routine_commits_leave_expired_log_entries_to_the_hourly_cleanup() {
        let _serial = one_at_a_time().await;
        let f = Fixture::new();
        // Entries expire after a second; a checkpoint every 5 commits
        // (written as `after_commit` does, without its hourly cleanup:
        // this test runs that by hand).
        let mut table = f
            .create(&[
                ("delta.logRetentionDuration", "interval 1 second"),
                ("delta.checkpointInterval", "5"),
            ])
            .await;
        let write = async |table: DeltaTable, id: i32, props: CommitProperties| {
            let table = f.write(table, id, props).await;
            checkpoint_when_due(&table, &f.url).expect("due");
            f.checkpoints_written().await;
            table
        };
        let pause = || tokio::time::sleep(Duration::from_millis(1_500));
        for id in 1..=11 {
            table = write(table, id, routine_commit()).await;
        }
        pause().await;
        table = write(table, 12, routine_commit()).await;
        assert!(
            f.commit(0).exists(),
            "a routine commit cleaned the log: {} entries",
            f.entries()
        );
        // The hourly cleanup deletes what expired before the checkpoint (10)…
        let cleaned = clean_log(&table, &f.url, LogCleanup::Hourly)
            .await
            .expect("clean");
        assert!(
            cleaned >= 10 && !f.commit(0).exists() && f.commit(10).exists(),
            "{cleaned} cleaned"
        );
        // … and then not again within the hour; `optimize` (`Now`) does.
        for id in 13..=16 {
            table = write(table, id, routine_commit()).await;
        }
        pause().await;
        table = write(table, 17, routine_commit()).await;
        assert_eq!(
            clean_log(&table, &f.url, LogCleanup::Hourly)
                .await
                .expect("clean"),
            0
        );
        assert!(f.commit(10).exists());
        assert!(
            clean_log(&table, &f.url, LogCleanup::Now)
                .await
                .expect("clean")
                > 0
        );
        assert!(!f.commit(10).exists() && f.commit(15).exists());
        // A commit with delta-rs's default properties cleans by itself: the
        // cost routine commits avoid.
        for id in 18..=21 {
            table = write(table, id, routine_commit()).await;
        }
        pause().await;
        table = write(table, 22, routine_commit()).await;
        assert!(f.commit(15).exists());
        table = f.write(table, 23, CommitProperties::default()).await;
        assert!(!f.commit(15).exists(), "delta-rs's own cleanup did not run");
        drop(table);
        // The table reads as written: 24 rows.
        assert_eq!(f.rows().await, 24);
    }
}
