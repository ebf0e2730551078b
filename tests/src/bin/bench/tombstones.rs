//! `medallion-bench tombstones`: what the tombstones of removed files cost a
//! busy table.
//!
//! A busy table removes a file with almost every commit (bronze compacts its
//! small files, a MERGE rewrites the silver files it touches, a gold model
//! is overwritten), and each checkpoint carries every tombstone still within
//! `delta.deletedFileRetentionDuration`: N = files removed a second × the
//! retention. For each N this writes a table of `live` files with N
//! tombstones and times, against N = 0 in the same run:
//!
//! ```text
//!  checkpoint write ── what delta-rs's writer pays every checkpoint_interval commits
//!  fresh load       ── what every reader pays that opens the table afresh
//!                      (the refiner, for each bronze table that moved)
//!  due commit       ── the commit that reaches the interval, as delta-rs makes it
//!                      (the checkpoint written inside it) and as medallion does
//!                      (`lake::routine_commit`, then `lake::after_commit` writes
//!                      it in a task of its own): what the bronze writer waits for
//!  busy (--busy-seconds) ── a commit every `busy_flush_ms` for that long on a
//!                      table with N tombstones and an interval of 10, three
//!                      ways: no checkpoint, delta-rs's cadence (every tenth
//!                      commit) and medallion's (resting 9× the CPU time of a
//!                      checkpoint after it): the process' CPU per second of wall time,
//!                      the checkpoints written and the longest run of commits
//!                      a fresh reader had to replay
//!  stall            ── the longest a task that wants to run every millisecond
//!                      waits, on a runtime of one worker thread, while
//!                      `lake::after_commit`'s task writes the checkpoint: what
//!                      the stream and the refiner, which share the workers,
//!                      wait behind it (the kernel's synchronous parts give the
//!                      worker up with `block_in_place`)
//! ```
//!
//! The data files are not written: neither a checkpoint nor a load reads them.

use std::time::Instant;

use anyhow::Context;
use deltalake::DeltaTable;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, Remove};
use deltalake::protocol::{DeltaOperation, SaveMode};

/// Actions per commit while building a table.
const CHUNK: usize = 50_000;

async fn commit(table: &mut DeltaTable, actions: Vec<Action>) -> anyhow::Result<()> {
    commit_with(
        table,
        actions,
        CommitProperties::default().with_create_checkpoint(false),
    )
    .await
}

async fn commit_with(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    properties: CommitProperties,
) -> anyhow::Result<()> {
    CommitBuilder::from(properties)
        .with_actions(actions)
        .build(
            Some(table.snapshot()?),
            table.log_store(),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: None,
                predicate: None,
            },
        )
        .await?;
    table.update_incremental(None).await?;
    Ok(())
}

fn add(path: &str, now: i64) -> Action {
    Action::Add(Add {
        path: path.to_string(),
        size: 1 << 20,
        modification_time: now,
        data_change: true,
        stats: Some(r#"{"numRecords":1000}"#.into()),
        ..Default::default()
    })
}

/// What one table with `live` files and `tombstones` removed ones costs.
struct Costs {
    /// Seconds to write its checkpoint.
    write_s: f64,
    /// The checkpoint's bytes.
    bytes: u64,
    /// The best of the fresh loads, in seconds.
    load_s: f64,
    /// The median commit that makes a checkpoint due, in seconds: with the
    /// checkpoint inside it (delta-rs), and medallion's.
    due_inline_s: f64,
    due_routine_s: f64,
    /// The longest wait of a task beside medallion's checkpoint task, in
    /// seconds.
    stall_s: f64,
}

/// The longest a task that sleeps 1 ms at a time waited beyond it while
/// `work` ran, on the current runtime.
async fn worst_wait_during(
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<f64> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut worst = 0f64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                worst = worst.max(t.elapsed().as_secs_f64() - 0.001);
            }
            worst
        }
    });
    // The ticker runs before the work starts.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let done = work.await;
    stop.store(true, Ordering::Relaxed);
    let worst = ticker.await?;
    done.map(|()| worst)
}

/// [`Costs::stall_s`] of `table` (whose checkpoint is due at every
/// commit), on a runtime of one worker.
fn stall(mut table: DeltaTable, url: url::Url, write_s: f64) -> anyhow::Result<f64> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let now = chrono::Utc::now().timestamp_millis();
        commit_with(
            &mut table,
            vec![add("stall.parquet", now)],
            medallion::lake::routine_commit(),
        )
        .await?;
        // The commit's own work is done; the window holds the checkpoint.
        worst_wait_during(async {
            medallion::lake::after_commit(&table, &url);
            tokio::time::sleep(std::time::Duration::from_secs_f64(write_s * 2.0 + 0.1)).await;
            Ok(())
        })
        .await
    })
}

/// The busy-table measurement's settings ([`busy`]).
pub(crate) struct Busy {
    pub(crate) seconds: u64,
    pub(crate) flush_ms: u64,
}

/// One busy run: the process' CPU seconds per wall second, the
/// checkpoints written, the longest run of commits without one.
struct BusyRun {
    cpu_share: f64,
    checkpoints: usize,
    longest_replay: u64,
}

/// Versions of the checkpoints in `log`.
fn checkpoint_versions(log: &std::path::Path) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(log)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some((v, _)) = name.split_once(".checkpoint.") {
            out.push(v.parse()?);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Commit to `table` every `busy.flush_ms` for `busy.seconds`, with
/// `after_commit` (medallion's checkpoints at `share`) or without it (none).
async fn busy_run(
    table: &mut DeltaTable,
    url: &url::Url,
    busy: &Busy,
    share: Option<f64>,
    rest_s: f64,
) -> anyhow::Result<BusyRun> {
    let log = url
        .to_file_path()
        .map_err(|_| anyhow::anyhow!("{url} is no local path"))?
        .join("_delta_log");
    if let Some(share) = share {
        medallion::lake::set_checkpoint_core_share(share);
    }
    let first = table.version().unwrap_or_default();
    let before = checkpoint_versions(&log)?.len();
    let now = chrono::Utc::now().timestamp_millis();
    let (wall, cpu) = (Instant::now(), super::refine_scale::cpu_time());
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(busy.flush_ms));
    let mut n = 0u64;
    while wall.elapsed().as_secs() < busy.seconds {
        tick.tick().await;
        commit_with(
            table,
            vec![add(&format!("busy-{first}-{n}.parquet"), now)],
            medallion::lake::routine_commit(),
        )
        .await?;
        if share.is_some() {
            medallion::lake::after_commit(table, url);
        }
        n += 1;
    }
    let cpu_share =
        (super::refine_scale::cpu_time() - cpu).as_secs_f64() / wall.elapsed().as_secs_f64();
    // Let a checkpoint task (resting or writing) end before the next run.
    tokio::time::sleep(std::time::Duration::from_secs_f64(rest_s)).await;
    let last = table.version().unwrap_or_default();
    let versions = checkpoint_versions(&log)?;
    let mut longest = 0;
    let mut from = first;
    for v in versions
        .iter()
        .copied()
        .filter(|v| *v > first && *v <= last)
    {
        longest = longest.max(v - from);
        from = v;
    }
    longest = longest.max(last - from);
    Ok(BusyRun {
        cpu_share,
        checkpoints: versions.len() - before,
        longest_replay: longest,
    })
}

/// The busy measurement of a table with `tombstones`: no checkpoint,
/// delta-rs's cadence, medallion's.
async fn busy(
    lake: &medallion::lake::Lake,
    live: usize,
    tombstones: usize,
    busy: &Busy,
    write_s: f64,
) -> anyhow::Result<[BusyRun; 3]> {
    // Each way on a table of its own, built alike, with medallion's
    // tables' interval (`checkpoint_interval`, 10): a run leaves its table
    // more files and commits than it found.
    let rest_s = write_s * 25.0 + 1.0;
    let mut runs = Vec::new();
    for (way, share) in [
        ("none", None),
        ("cadence", Some(1.0)),
        ("rested", Some(medallion::lake::CHECKPOINT_CORE_SHARE)),
    ] {
        let (mut table, url) = build(
            lake,
            &format!("busy{tombstones}{way}"),
            live,
            tombstones,
            Some("10"),
        )
        .await?;
        // A first checkpoint, outside the timing: it reads the log from the
        // JSON commits, which a busy table does not pay every time.
        deltalake::protocol::checkpoints::create_checkpoint(&table, None).await?;
        table.update_incremental(None).await?;
        runs.push(busy_run(&mut table, &url, busy, share, rest_s).await?);
    }
    let [none, cadence, rested]: [BusyRun; 3] = runs
        .try_into()
        .map_err(|_| anyhow::anyhow!("three busy runs"))?;
    medallion::lake::set_checkpoint_core_share(1.0);
    Ok([none, cadence, rested])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A table `name` of `live` files and `tombstones` removed ones, with
/// `delta.checkpointInterval` = `interval` (None: delta-rs's default, 100).
async fn build(
    lake: &medallion::lake::Lake,
    name: &str,
    live: usize,
    tombstones: usize,
    interval: Option<&str>,
) -> anyhow::Result<(DeltaTable, url::Url)> {
    use arrow::array::{Int32Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    let url = lake.refined_url("gold", name)?;
    let schema = std::sync::Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false)]));
    let batch = RecordBatch::try_new(schema, vec![std::sync::Arc::new(Int32Array::from(vec![1]))])?;
    let mut write = lake.handle(&url)?.write(vec![batch]);
    if let Some(interval) = interval {
        write = write.with_configuration([("delta.checkpointInterval", Some(interval))]);
    }
    let mut table = write.await?;
    let now = chrono::Utc::now().timestamp_millis();
    let paths: Vec<String> = (0..live + tombstones)
        .map(|i| format!("part-{i:09}.parquet"))
        .collect();
    for chunk in paths.chunks(CHUNK) {
        commit(&mut table, chunk.iter().map(|p| add(p, now)).collect()).await?;
    }
    remove(&mut table, &paths[live..], now).await?;
    Ok((table, url))
}

/// Commit the removal of `paths` from `table` at `now` (ms), in commits of
/// [`CHUNK`] actions: as many tombstones, whether or not the files exist.
pub(crate) async fn remove(
    table: &mut DeltaTable,
    paths: &[String],
    now: i64,
) -> anyhow::Result<()> {
    for chunk in paths.chunks(CHUNK) {
        let removes = chunk
            .iter()
            .map(|p| {
                Action::Remove(Remove {
                    path: p.clone(),
                    data_change: true,
                    deletion_timestamp: Some(now),
                    size: Some(1 << 20),
                    ..Default::default()
                })
            })
            .collect();
        commit(table, removes).await?;
    }
    Ok(())
}

async fn measure(
    lake: &medallion::lake::Lake,
    name: &str,
    live: usize,
    tombstones: usize,
    rounds: usize,
) -> anyhow::Result<Costs> {
    // A checkpoint due at every commit, so each timed commit makes one due.
    let (mut table, url) = build(lake, name, live, tombstones, Some("1")).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let started = Instant::now();
    deltalake::protocol::checkpoints::create_checkpoint(&table, None).await?;
    let write_s = started.elapsed().as_secs_f64();
    let log = url
        .to_file_path()
        .map_err(|_| anyhow::anyhow!("{url} is no local path"))?
        .join("_delta_log");
    let mut bytes = 0;
    for e in std::fs::read_dir(&log)? {
        let e = e?;
        if e.file_name().to_string_lossy().contains(".checkpoint.") {
            bytes += e.metadata()?.len();
        }
    }
    let mut load_s = f64::MAX;
    for _ in 0..rounds {
        let started = Instant::now();
        let t = lake.open(&url).await?.context("the table")?;
        load_s = load_s.min(started.elapsed().as_secs_f64());
        anyhow::ensure!(
            t.snapshot()?.log_data().num_files() == live + 1,
            "{name}: the load does not hold the {live} live files"
        );
    }
    let (mut due_inline, mut due_routine) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let started = Instant::now();
        commit_with(
            &mut table,
            vec![add(&format!("inline-{round}.parquet"), now)],
            CommitProperties::default().with_cleanup_expired_logs(Some(false)),
        )
        .await?;
        due_inline.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        commit_with(
            &mut table,
            vec![add(&format!("routine-{round}.parquet"), now)],
            medallion::lake::routine_commit(),
        )
        .await?;
        medallion::lake::after_commit(&table, &url);
        due_routine.push(started.elapsed().as_secs_f64());
        // Let the checkpoint task end before the next round is timed.
        tokio::time::sleep(std::time::Duration::from_secs_f64(write_s * 2.0 + 0.05)).await;
    }
    let (t, u) = (table.clone(), url.clone());
    let stall_s = tokio::task::spawn_blocking(move || stall(t, u, write_s)).await??;
    Ok(Costs {
        write_s,
        bytes,
        load_s,
        due_inline_s: median(due_inline),
        due_routine_s: median(due_routine),
        stall_s,
    })
}

/// Print the cost of each count of `tombstones` beside `live` files.
pub(crate) fn tombstones(
    live: usize,
    counts: &[usize],
    rounds: usize,
    busy_settings: Busy,
) -> anyhow::Result<()> {
    // The due commit and the stall time one checkpoint after another.
    medallion::lake::set_checkpoint_core_share(1.0);
    let dir = tempfile::tempdir()?;
    let lake = medallion::lake::Lake::from_config(&medallion::Config {
        lake_url: dir.path().display().to_string(),
        ..medallion::Config::default()
    })?;
    let rt = tokio::runtime::Runtime::new()?;
    let base = rt.block_on(measure(&lake, "none", live, 0, rounds))?;
    println!(
        "tombstones: {live} live files, no tombstone: checkpoint written in {:.1} ms, fresh load {:.1} ms; \
         due commit {:.1} ms with the checkpoint inside, {:.1} ms medallion's; \
         longest wait of a task beside the checkpoint task {:.1} ms ({:.3}x the checkpoint's time)",
        base.write_s * 1e3,
        base.load_s * 1e3,
        base.due_inline_s * 1e3,
        base.due_routine_s * 1e3,
        base.stall_s * 1e3,
        base.stall_s / base.write_s,
    );
    for &n in counts {
        let c = rt.block_on(measure(&lake, &format!("t{n}"), live, n, rounds))?;
        println!(
            "tombstones: {n} beside {live} live files: checkpoint {:.1} MiB written in {:.0} ms ({:.1}x), fresh load {:.0} ms ({:.1}x); \
             due commit {:.1} ms with the checkpoint inside, {:.1} ms medallion's ({:.3}x); \
             longest wait of a task beside the checkpoint task {:.1} ms ({:.3}x the checkpoint's time)",
            c.bytes as f64 / (1 << 20) as f64,
            c.write_s * 1e3,
            c.write_s / base.write_s,
            c.load_s * 1e3,
            c.load_s / base.load_s,
            c.due_inline_s * 1e3,
            c.due_routine_s * 1e3,
            c.due_routine_s / c.due_inline_s,
            c.stall_s * 1e3,
            c.stall_s / c.write_s,
        );
        if busy_settings.seconds > 0 {
            let [none, cadence, rested] =
                rt.block_on(busy(&lake, live, n, &busy_settings, c.write_s))?;
            println!(
                "tombstones: {n}, a commit every {} ms for {} s: CPU {:.3} s/s with no checkpoint; \
                 delta-rs's cadence (every checkpoint_interval-th commit): {:.3} s/s, {} checkpoints, longest replay {} commits; \
                 medallion's (resting {:.0}x a checkpoint's CPU time): {:.3} s/s, {} checkpoints, longest replay {} commits; \
                 the checkpoints' CPU {:.3} -> {:.3} s/s ({:.2}x)",
                busy_settings.flush_ms,
                busy_settings.seconds,
                none.cpu_share,
                cadence.cpu_share,
                cadence.checkpoints,
                cadence.longest_replay,
                (1.0 - medallion::lake::CHECKPOINT_CORE_SHARE)
                    / medallion::lake::CHECKPOINT_CORE_SHARE,
                rested.cpu_share,
                rested.checkpoints,
                rested.longest_replay,
                cadence.cpu_share - none.cpu_share,
                rested.cpu_share - none.cpu_share,
                (rested.cpu_share - none.cpu_share) / (cadence.cpu_share - none.cpu_share),
            );
        }
    }
    Ok(())
}
