//! Freshness: how long a source commit takes to become visible in bronze, in
//! silver and in an `on_change` gold model, under a steady pgbench load.
//!
//! ```text
//!   pgbench -R tps ──► account_move_line ──► medallion run (writer + refiner)
//!                         commit_ts C, LSN L        │
//!   bronze: the Delta version whose files hold the row          ─┐
//!   silver: the first version whose txn(medallion:silver:…) > L  ├─ its commit time T
//!   gold:   the first version whose txn(medallion:gold:…) > L    ─┘
//!   latency = T − C, per streamed row; p50 and p99 per layer
//! ```
//!
//! Optionally `--idle-tables N` further silver tables that never change sit
//! beside the busy one, as an ERP's hundreds of quiet tables do.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::bail;
use arrow::array::AsArray;
use medallion::app_id::AppId;

use super::{Bench, DB, insert_sql};

/// The gold model refreshed as silver moves.
const GOLD: &str = "fresh_totals";

/// Commit time (ms since the epoch) of each Delta version, with the data
/// files it added (not a compaction's) and the `txn` version it recorded
/// for `app_id` (if any).
struct Version {
    ts_ms: i64,
    files: Vec<String>,
    txn: Option<i64>,
}

fn delta_versions(table: &Path, app_id: &str) -> anyhow::Result<Vec<Version>> {
    let mut out = Vec::new();
    for p in super::commit_files(table)? {
        let mut v = Version {
            ts_ms: 0,
            files: Vec::new(),
            txn: None,
        };
        for line in std::fs::read_to_string(&p)?.lines() {
            let j: serde_json::Value = serde_json::from_str(line)?;
            if let Some(t) = j.pointer("/commitInfo/timestamp").and_then(|t| t.as_i64()) {
                v.ts_ms = t;
            }
            // A compaction's files (dataChange = false) hold rows already
            // visible in an earlier version.
            if let Some(path) = j.pointer("/add/path").and_then(|t| t.as_str())
                && j.pointer("/add/dataChange").and_then(|d| d.as_bool()) != Some(false)
            {
                v.files.push(path.to_string());
            }
            if j.pointer("/txn/appId").and_then(|a| a.as_str()) == Some(app_id) {
                v.txn = j.pointer("/txn/version").and_then(|t| t.as_i64());
            }
        }
        out.push(v);
    }
    Ok(out)
}

/// One streamed change: its commit LSN (lake value) and commit time (µs).
struct Change {
    lsn: i64,
    commit_us: i64,
}

/// Latencies in seconds of every change in the refined table at `dir`:
/// the first version whose `txn` passed the change's commit LSN.
fn refined_latencies(dir: &Path, app_id: &str, changes: &[Change]) -> anyhow::Result<Vec<f64>> {
    // (txn version, commit time), in log order; txn versions only grow.
    let marks: Vec<(i64, i64)> = delta_versions(dir, app_id)?
        .into_iter()
        .filter_map(|v| v.txn.map(|t| (t, v.ts_ms)))
        .collect();
    let mut lat = Vec::with_capacity(changes.len());
    for c in changes {
        let i = marks.partition_point(|(t, _)| *t <= c.lsn);
        match marks.get(i) {
            Some((_, ts_ms)) => lat.push((ts_ms * 1000 - c.commit_us) as f64 / 1e6),
            None => bail!(
                "{}: change at lake LSN {} never became visible",
                dir.display(),
                c.lsn
            ),
        }
    }
    Ok(lat)
}

/// p50 and p99 of `lat` (sorted here).
fn quantiles(layer: &str, lat: &mut [f64]) -> anyhow::Result<(f64, f64)> {
    if lat.is_empty() {
        bail!("{layer}: no streamed rows");
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    Ok((p(0.5), p(0.99)))
}

/// Run the load; print p50/p99 per layer; the bronze (p50, p99).
/// Seconds after which Postgres 15 has reported a backend's table counters
/// (`PGSTAT_IDLE_INTERVAL` is 10 s).
const STATS_DELAY_S: u64 = 11;

pub(crate) fn freshness(
    seconds: u64,
    tps: u64,
    idle_tables: usize,
    aged_log: u64,
) -> anyhow::Result<(f64, f64)> {
    let b = Bench::new()?;
    // The bench cluster turns synchronous_commit off for throughput; then
    // the WAL writer flushes (and the walsender sends) only every
    // wal_writer_delay (200 ms). An ERP commits with Postgres' default.
    b.sql(&format!("ALTER DATABASE {DB} SET synchronous_commit = on"))?;
    b.sql("SELECT medallion.add_source('account_move_line')")?;
    if idle_tables > 0 {
        b.sql(&format!(
            "DO $$ BEGIN FOR i IN 1..{idle_tables} LOOP \
               EXECUTE format('CREATE TABLE quiet%s (id int PRIMARY KEY, v int NOT NULL)', i); \
               EXECUTE format('INSERT INTO quiet%s SELECT g, g FROM generate_series(1, 100) g', i); \
               PERFORM medallion.add_source(format('quiet%s', i)); \
             END LOOP; END $$"
        ))?;
    }
    b.sql(&format!(
        "SELECT medallion.define_gold('{GOLD}', \
           'SELECT count(*) AS lines, sum(debit) AS debit FROM silver.account_move_line')"
    ))?;
    b.catch_up()?;
    // Silver and gold of every table are built before the load starts: the
    // first cycle over hundreds of new tables is a catch-up, not freshness.
    let st = b.sidecar(&["refine"]).status()?;
    if !st.success() {
        bail!("medallion refine failed: {st}");
    }
    if aged_log > 0 {
        // Named as delta-rs names a commit it has not finished (readers skip
        // such files); what a listing of the directory costs is its number
        // of entries.
        for dir in [
            medallion_tests::lake::bronze_dir(&b.lake(), "public", "account_move_line"),
            b.lake().join("silver").join("account_move_line"),
            b.lake().join("gold").join(GOLD),
        ] {
            let log = dir.join("_delta_log");
            for i in 0..aged_log {
                std::fs::write(log.join(format!("_commit_{i:016x}.json.tmp")), b"")?;
            }
        }
    }
    // MEDALLION_REFINE_INTERVAL_MS=0 in the bench's environment measures
    // bronze alone (the refiner then takes no CPU from the writer).
    let interval = std::env::var("MEDALLION_REFINE_INTERVAL_MS").unwrap_or_else(|_| "5000".into());
    let refined = interval != "0";
    let started_at = b.sql("SELECT clock_timestamp()")?;
    let started = std::time::Instant::now();
    let mut child = b
        .sidecar(&["run"])
        .env("MEDALLION_REFINE_INTERVAL_MS", &interval)
        .spawn()?;
    // The load starts once the sidecar streams and (when refining) its
    // refiner finished a first cycle: that cycle opens every silver table
    // afresh, a start-up cost printed here, not a change's freshness.
    let warm = format!(
        "SELECT (SELECT count(*) FROM pg_replication_slots WHERE active) > 0 \
           AND ({} OR (SELECT max(updated_at) FROM medallion.table_status WHERE layer = 'gold') > '{started_at}')",
        !refined
    );
    while b.sql(&warm)? != "t" {
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            bail!("the sidecar did not stream and refine within 300 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "freshness: the sidecar streamed{} {:.1} s after its start",
        if refined { " and refined once" } else { "" },
        started.elapsed().as_secs_f64()
    );
    // A backend reports its table counters once a second while busy, and
    // within 10 s once idle (Postgres 15): wait past that, so the first
    // cycle's writes (every quiet row) are counted before the load, not in it.
    std::thread::sleep(Duration::from_secs(STATS_DELAY_S));
    // What the sidecar writes into the source database beside the load:
    // status rows (and the refiner's position), and the WAL of everything
    // (which the walsender decodes).
    let writes = "SELECT (SELECT sum(n_tup_ins + n_tup_upd) FROM pg_stat_user_tables \
                    WHERE relid IN ('medallion.table_status'::regclass, \
                                    to_regclass('medallion.refiner_position'))) || ' ' || \
                  (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint || ' ' || \
                  coalesce((SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables \
                    WHERE relid = to_regclass('medallion.refiner_position')), 0)";
    let writes_before = b.sql(writes)?;
    let load_started_at = b.sql("SELECT clock_timestamp()")?;
    // ~tps single-row transactions through pgbench.
    let script = b.dir.path().join("fresh.sql");
    std::fs::write(&script, format!("{};\n", insert_sql(1, 1)))?;
    let st = Command::new(b.cluster.bin("pgbench"))
        .args(["-n", "-c", "4", "-j", "2", "-T", &seconds.to_string()])
        .args(["-R", &tps.to_string(), "-f"])
        .arg(&script)
        .arg(b.cluster.url(DB))
        .stdout(std::process::Stdio::null())
        .status()?;
    if !st.success() {
        bail!("pgbench failed");
    }
    // Long enough for the refiner's fallback timer (a change waiting for it
    // shows as a latency of seconds, not as a change never refined) and for
    // the counters of the load's writes to be reported.
    std::thread::sleep(Duration::from_secs(STATS_DELAY_S));
    let writes_after = b.sql(writes)?;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait()?;

    let table = medallion_tests::lake::bronze_dir(&b.lake(), "public", "account_move_line");
    let mut bronze = Vec::new();
    let mut changes = Vec::new();
    // Commit times (ms) of the versions that added streamed rows.
    let mut streamed_at = Vec::new();
    for v in delta_versions(&table, "")? {
        let before = changes.len();
        for f in v.files {
            let file = std::fs::File::open(table.join(&f))?;
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?
                    .build()?;
            for batch in reader {
                let batch = batch?;
                let column = |name: &str| -> anyhow::Result<_> {
                    Ok(batch.column(batch.schema().index_of(name)?).clone())
                };
                let op = column("_mdl_op")?;
                let ts = column("_mdl_commit_ts")?;
                let lsn = column("_mdl_lsn")?;
                let (op, ts, lsn) = (
                    op.as_string::<i32>(),
                    ts.as_primitive::<arrow::datatypes::TimestampMicrosecondType>(),
                    lsn.as_primitive::<arrow::datatypes::Int64Type>(),
                );
                for r in 0..batch.num_rows() {
                    if op.value(r) != "snapshot" {
                        bronze.push((v.ts_ms * 1000 - ts.value(r)) as f64 / 1e6);
                        changes.push(Change {
                            lsn: lsn.value(r),
                            commit_us: ts.value(r),
                        });
                    }
                }
            }
        }
        if changes.len() > before {
            streamed_at.push(v.ts_ms);
        }
    }
    let (p50, p99) = quantiles("bronze", &mut bronze)?;
    let counts = |s: &str| -> anyhow::Result<(i64, i64, i64)> {
        let mut it = s.split_whitespace().map(str::parse::<i64>);
        match (it.next(), it.next(), it.next()) {
            (Some(a), Some(b), Some(c)) => Ok((a?, b?, c?)),
            _ => bail!("unexpected counts {s:?}"),
        }
    };
    let ((rows0, wal0, pos0), (rows1, wal1, pos1)) =
        (counts(&writes_before)?, counts(&writes_after)?);
    let span = (seconds + STATS_DELAY_S) as f64;
    println!(
        "freshness: status rows written into the source database {:.0} a second ({:.1} of them the refiner's position); WAL {:.2} MiB a second (the load's and the sidecar's)",
        (rows1 - rows0) as f64 / span,
        (pos1 - pos0) as f64 / span,
        (wal1 - wal0) as f64 / span / (1 << 20) as f64,
    );
    // Which status rows were written over the span, by layer and state.
    println!(
        "freshness: status rows written over the load, by layer and state: {}",
        b.sql(&format!(
            "SELECT coalesce(string_agg(k || ' ' || n, ', ' ORDER BY k), 'none') FROM ( \
               SELECT layer || '/' || state || CASE WHEN follows_refiner THEN '/following' ELSE '' END AS k, \
                      count(*) AS n FROM medallion.table_status \
                WHERE updated_at >= '{load_started_at}' GROUP BY 1) r"
        ))?
        .trim()
    );
    // What the status rows are for: the runs recorded over the same span
    // (a run writes its object's status row and a row of medallion.runs).
    println!(
        "freshness: runs recorded (medallion.runs, by layer and object): {}",
        b.sql(&format!(
            "SELECT coalesce(string_agg(layer || '.' || name || ' ' || n || ' (' || round(n / {span:.1}, 1) || '/s)', ', ' ORDER BY layer, name), 'none') \
             FROM (SELECT layer, name, count(*) AS n FROM medallion.runs \
                   WHERE started_at >= '{load_started_at}' GROUP BY layer, name) r"
        ))?
        .trim()
    );
    // How often the writer committed, and its longest pause: a tail in the
    // latencies with long gaps is the writer stalled, not batched.
    let mut gaps: Vec<f64> = streamed_at
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e3)
        .collect();
    let (gap50, gap99) = quantiles("bronze commit gaps", &mut gaps)?;
    println!(
        "freshness: {} bronze commits of streamed rows, {:.1} a second; time between them p50 {gap50:.3} s, p99 {gap99:.3} s, max {:.3} s",
        streamed_at.len(),
        gaps.len() as f64 / gaps.iter().sum::<f64>().max(1e-3),
        gaps.last().copied().unwrap_or_default(),
    );
    let refined = if refined {
        let silver_app = AppId::Silver("account_move_line").to_string();
        let gold_app = AppId::Gold(GOLD).to_string();
        let mut silver = refined_latencies(
            &b.lake().join("silver").join("account_move_line"),
            &silver_app,
            &changes,
        )?;
        let mut gold = refined_latencies(&b.lake().join("gold").join(GOLD), &gold_app, &changes)?;
        let (s50, s99) = quantiles("silver", &mut silver)?;
        let (g50, g99) = quantiles("gold", &mut gold)?;
        format!(
            "silver p50 {s50:.3} s, p99 {s99:.3} s (target p99 < 1 s); \
             gold ({GOLD}, on_change) p50 {g50:.3} s, p99 {g99:.3} s (target p99 < 3 s)"
        )
    } else {
        "silver and gold not refined (MEDALLION_REFINE_INTERVAL_MS=0)".into()
    };
    println!(
        "freshness: {} commits at ~{tps} tps for {seconds} s beside {idle_tables} quiet tables, \
         {aged_log} aged log entries per timed table: commit -> visible in bronze p50 {p50:.3} s, p99 {p99:.3} s (target p99 < 0.25 s); {refined}",
        changes.len()
    );
    Ok((p50, p99))
}
