//! `medallion-bench soak --minutes N`: a steady write load (pgbench at a
//! fixed rate) for N minutes against `medallion run` (bronze, silver, gold),
//! with `medallion optimize` on a timer. Every 10 s it samples the
//! sidecar's RSS and open files, the files of the bronze tables' current
//! versions and on disk, and the slot's lag; it prints first/last/max of
//! each and fails if one grows: the mean of the last third of the samples
//! above 1.5× the mean of the middle third (lag: above 64 MiB). A sample
//! line a minute shows the curve of each measure. The sidecar's heap
//! (jemalloc's allocated and resident bytes, scraped from `/metrics`)
//! tells live data from allocator fragmentation when RSS moves. Memory
//! (RSS, heap allocated, heap resident) also fails when it creeps, in runs
//! of 30 minutes or more: the rule, and why it is that rule, are in
//! [`medallion_tests::flatness`]. `--aged-tombstones N` first gives every
//! table N tombstones, so a short run starts where a long one would be
//! once its `time_travel_hours` filled.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use medallion_tests::cluster::{ClusterOptions, PgCluster};
use medallion_tests::flatness::Samples;

const DB: &str = "soak";

const SCHEMA: &str = "
CREATE TABLE account_move (id bigint PRIMARY KEY, state text NOT NULL, amount_total numeric(16,2) NOT NULL);
CREATE TABLE account_move_line (id bigserial PRIMARY KEY, move_id bigint NOT NULL, debit numeric(16,2), name text);
INSERT INTO account_move SELECT g, 'posted', 0 FROM generate_series(1, 100000) g;
SELECT medallion.add_source('account_move'); SELECT medallion.add_source('account_move_line');
SELECT medallion.define_gold('by_state', $$SELECT state, count(*) AS moves, sum(amount_total) AS total
    FROM silver.account_move GROUP BY state$$);
";

const SCRIPT: &str = "\\set id random(1, 100000)
BEGIN;
UPDATE account_move SET amount_total = amount_total + 1 WHERE id = :id;
INSERT INTO account_move_line (move_id, debit, name) VALUES (:id, 1, 'soak');
END;
";

struct Series {
    name: &'static str,
    unit: &'static str,
    samples: Samples,
}

impl Series {
    fn new(name: &'static str, unit: &'static str) -> Series {
        Series {
            name,
            unit,
            samples: Samples::new(10.0, Vec::new()),
        }
    }

    fn values(&self) -> &[f64] {
        self.samples.values()
    }

    fn report(&self) -> String {
        let s = &self.samples;
        let max = self.values().iter().cloned().fold(f64::MIN, f64::max);
        let (mid, last) = s.third_means();
        let [m1, m2, m3] = s.third_medians();
        format!(
            "{:<22} first {:>10.1} last {:>10.1} max {:>10.1} {} (last third / middle third {:.2}, slope of the last third {:+.1}/h; \
             medians by third {m1:.1} / {m2:.1} / {m3:.1}, robust slope of the last third {:+.1}/h, of the last two thirds {:+.1}/h)",
            self.name,
            self.values().first().copied().unwrap_or(0.0),
            self.values().last().copied().unwrap_or(0.0),
            max,
            self.unit,
            if mid > 0.0 { last / mid } else { 0.0 },
            s.last_third_slope_per_hour(),
            s.robust_slope_per_hour(1.0 / 3.0),
            s.robust_slope_per_hour(2.0 / 3.0),
        )
    }
}

fn proc_kb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

fn files_on_disk(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
                .count()
        })
        .unwrap_or(0)
}

/// Entries of a directory (0 when it does not exist).
fn files_on_disk_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// The tables the soak's sidecar writes: (layer, name); bronze tables are
/// `public.<name>`.
const LAKE_TABLES: [(&str, &str); 5] = [
    ("bronze", "account_move"),
    ("bronze", "account_move_line"),
    ("silver", "account_move"),
    ("silver", "account_move_line"),
    ("gold", "by_state"),
];

fn table_dir(lake: &Path, layer: &str, name: &str) -> std::path::PathBuf {
    if layer == "bronze" {
        medallion_tests::lake::bronze_dir(lake, "public", name)
    } else {
        medallion_tests::lake::refined_dir(lake, layer, name)
    }
}

/// Give each of the soak's tables `n` tombstones: removed files that never
/// existed, removed now, so they stay within `time_travel_hours` for the
/// run. The sidecar is stopped meanwhile.
async fn age_tables(lake: &Path, n: usize) -> anyhow::Result<()> {
    let now = chrono::Utc::now().timestamp_millis();
    let paths: Vec<String> = (0..n).map(|i| format!("aged-{i:09}.parquet")).collect();
    for (layer, name) in LAKE_TABLES {
        let url = url::Url::from_directory_path(table_dir(lake, layer, name))
            .map_err(|()| anyhow::anyhow!("{layer}.{name}: no absolute path"))?;
        let mut table = deltalake::open_table(url).await?;
        super::tombstones::remove(&mut table, &paths, now).await?;
        eprintln!("soak: {layer}.{name}: {n} tombstones added");
    }
    Ok(())
}

pub fn soak(
    minutes: u64,
    tps: u64,
    optimize_every_s: u64,
    aged_tombstones: usize,
) -> anyhow::Result<()> {
    let bin = std::env::current_exe()?.with_file_name("medallion-sidecar");
    if !bin.exists() {
        bail!(
            "{} missing: cargo build -p medallion-tests --bins",
            bin.display()
        );
    }
    let cluster = PgCluster::start_with(ClusterOptions {
        extra_conf: vec!["max_wal_size = '4GB'".into()],
    })?;
    cluster.create_db(DB)?;
    cluster.sql(DB, "CREATE EXTENSION pg_medallion")?;
    cluster.psql(DB, &["-q", "-c", SCHEMA])?;
    // The lake is kept when the run fails (to look at its logs), removed
    // when it passes.
    let dir = tempfile::Builder::new()
        .prefix("medallion-soak-")
        .tempdir()?
        .keep();
    eprintln!("soak: lake in {} (kept if the run fails)", dir.display());
    let lake = dir.join("lake");
    let metrics_addr = format!("127.0.0.1:{}", medallion_tests::ports::free_port());
    let sidecar = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args)
            .env("MEDALLION_DATABASE_URL", cluster.url(DB))
            .env("MEDALLION_LAKE_URL", &lake)
            .env("MEDALLION_REFINE_INTERVAL_MS", "2000")
            .env(
                "MEDALLION_LOG",
                "warn,deltalake_core::operations::merge=error",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        c
    };
    let mut run = sidecar(&["run"])
        .env("MEDALLION_METRICS_ADDR", &metrics_addr)
        .spawn()?;
    if aged_tombstones > 0 {
        // Every table exists once the first refine wrote the model.
        let deadline = Instant::now() + Duration::from_secs(180);
        while LAKE_TABLES.iter().any(|(layer, name)| {
            !table_dir(&lake, layer, name)
                .join("_delta_log/00000000000000000000.json")
                .exists()
        }) {
            if Instant::now() > deadline {
                bail!("the sidecar did not create every table within 180 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        sigterm(run.id());
        let st = run.wait()?;
        if !st.success() {
            bail!("the sidecar did not stop cleanly before the tables were aged: {st}");
        }
        tokio::runtime::Runtime::new()?.block_on(age_tables(&lake, aged_tombstones))?;
        run = sidecar(&["run"])
            .env("MEDALLION_METRICS_ADDR", &metrics_addr)
            .spawn()?;
    }
    let http = reqwest::Client::new();
    let metrics_url = format!("http://{metrics_addr}/metrics");
    let script = dir.join("soak.sql");
    std::fs::write(&script, SCRIPT)?;
    let seconds = minutes * 60;
    let pgbench = Command::new(cluster.bin("pgbench"))
        .args(["-n", "-M", "prepared", "-c", "4", "-j", "2"])
        .args(["-R", &tps.to_string(), "-T", &seconds.to_string(), "-f"])
        .arg(&script)
        .arg(cluster.url(DB))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut series = [
        Series::new("sidecar RSS", "MiB"),
        Series::new("sidecar open files", ""),
        Series::new("bronze files (current)", ""),
        Series::new("bronze files on disk", ""),
        Series::new("slot lag", "MiB"),
        Series::new("heap allocated", "MiB"),
        Series::new("heap resident", "MiB"),
        Series::new("silver+gold files (current)", ""),
        Series::new("silver+gold files on disk", ""),
        Series::new("bronze log entries", ""),
    ];
    let start = Instant::now();
    let mut last_optimize = Instant::now();
    let mut optimizes = 0;
    let tables = ["account_move", "account_move_line"];
    while start.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(10));
        if let Some(st) = run.try_wait()? {
            bail!("the sidecar stopped during the soak: {st}");
        }
        if last_optimize.elapsed() >= Duration::from_secs(optimize_every_s) {
            let st = sidecar(&["optimize", "--retain-hours", "1"]).status()?;
            if !st.success() {
                bail!("medallion optimize failed: {st}");
            }
            optimizes += 1;
            last_optimize = Instant::now();
        }
        let pid = run.id();
        series[0].samples.push(proc_kb(pid, "VmRSS:") / 1024.0);
        series[1]
            .samples
            .push(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as f64);
        let (current, disk, refined_current, refined_disk) = rt.block_on(async {
            let (mut current, mut disk) = (0, 0);
            for t in tables {
                let (c, d) =
                    delta_files(&medallion_tests::lake::bronze_dir(&lake, "public", t)).await?;
                current += c;
                disk += d;
            }
            // Silver and gold: `medallion optimize` compacts and vacuums
            // bronze only, so their files are watched too.
            let (mut refined_current, mut refined_disk) = (0, 0);
            for (layer, name) in [
                ("silver", "account_move"),
                ("silver", "account_move_line"),
                ("gold", "by_state"),
            ] {
                let (c, d) =
                    delta_files(&medallion_tests::lake::refined_dir(&lake, layer, name)).await?;
                refined_current += c;
                refined_disk += d;
            }
            anyhow::Ok((current, disk, refined_current, refined_disk))
        })?;
        // Printed, not judged: entries stay for the tables' log retention
        // (Delta's default: 30 days), and a local directory's listing reads
        // them all.
        let log_entries: usize = tables
            .iter()
            .map(|t| {
                files_on_disk_in(
                    &medallion_tests::lake::bronze_dir(&lake, "public", t).join("_delta_log"),
                )
            })
            .sum();
        series[9].samples.push(log_entries as f64);
        series[2].samples.push(current as f64);
        series[3].samples.push(disk as f64);
        series[7].samples.push(refined_current as f64);
        series[8].samples.push(refined_disk as f64);
        let lag: f64 = cluster
            .sql(
                DB,
                "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0) \
                 FROM pg_replication_slots WHERE slot_name = 'medallion'",
            )?
            .trim()
            .parse()
            .context("slot lag")?;
        series[4].samples.push(lag / (1 << 20) as f64);
        let text = rt.block_on(async {
            http.get(&metrics_url)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await
        })?;
        series[5]
            .samples
            .push(gauge(&text, "medallion_heap_allocated_bytes")? / (1 << 20) as f64);
        series[6]
            .samples
            .push(gauge(&text, "medallion_heap_resident_bytes")? / (1 << 20) as f64);
        // One line a minute: the curve, not only first/last/max, says
        // whether a rising measure levels off. Active and metadata bytes
        // tell fragmentation and bookkeeping from unpurged pages when
        // resident creeps (printed, not judged).
        if series[0].values().len().is_multiple_of(6) {
            let mib = |name| gauge(&text, name).map(|b| b / (1 << 20) as f64);
            println!(
                "soak: sample t={}s rss={:.1}MiB heap={:.1}/{:.1}/{:.1}/{:.1}MiB files={} current={} on_disk={} log={log_entries} refined={}/{} lag={:.2}MiB compactions={}/{}",
                start.elapsed().as_secs(),
                series[0].values().last().unwrap_or(&0.0),
                series[5].values().last().unwrap_or(&0.0),
                mib("medallion_heap_active_bytes")?,
                mib("medallion_heap_metadata_bytes")?,
                series[6].values().last().unwrap_or(&0.0),
                series[1].values().last().unwrap_or(&0.0),
                current,
                disk,
                refined_current,
                refined_disk,
                lag / (1 << 20) as f64,
                gauge(
                    &text,
                    "medallion_bronze_compactions_total{outcome=\"compacted\"}"
                )?,
                gauge(
                    &text,
                    "medallion_bronze_compactions_total{outcome=\"failed\"}"
                )?,
            );
        }
    }
    let out = pgbench.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let achieved = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("?")
        .to_string();
    sigterm(run.id());
    let st = run.wait()?;
    println!(
        "soak: {minutes} min at {tps} tps asked ({achieved} tps achieved), optimize every {optimize_every_s} s ({optimizes} runs), {} samples",
        series[0].values().len()
    );
    let mut grew = Vec::new();
    for s in &series {
        println!("soak: {}", s.report());
        let (mid, last) = s.samples.third_means();
        let limit = if s.name == "slot lag" {
            64.0
        } else {
            1.5 * mid.max(1.0)
        };
        // Files on disk wait for the retention window (1 h) before vacuum.
        if !s.name.ends_with("files on disk") && s.name != "bronze log entries" && last > limit {
            grew.push(s.name);
        }
        // Memory must also not creep (see the module doc): the level of
        // the last third against the middle one, and a robust slope over
        // the last two thirds, once the run is long enough for them to be
        // past start-up (≥ 30 minutes in all).
        let memory = matches!(s.name, "sidecar RSS" | "heap allocated" | "heap resident");
        if memory && minutes >= 30 && s.samples.creeps() && !grew.contains(&s.name) {
            grew.push(s.name);
        }
        if memory && minutes >= 30 {
            let lsq = s.samples.last_third_slope_per_hour();
            println!(
                "soak: {}: the former rule (least-squares slope of the last third {lsq:+.1}/h against {:.1}/h) would say {}",
                s.name,
                0.10 * last.max(1.0),
                if lsq > 0.10 * last.max(1.0) {
                    "not flat"
                } else {
                    "flat"
                }
            );
        }
    }
    if !st.success() {
        bail!("the sidecar did not stop cleanly on SIGTERM: {st}");
    }
    if !grew.is_empty() {
        bail!("soak: not flat: {grew:?}");
    }
    println!("soak: OK: flat");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Files of a Delta table's current version, and Parquet files in its
/// directory; (0, 0) before the table exists.
async fn delta_files(path: &Path) -> anyhow::Result<(usize, usize)> {
    let disk = files_on_disk(path);
    let url = url::Url::from_directory_path(path).map_err(|_| anyhow::anyhow!("path"))?;
    let current = match deltalake::open_table(url).await {
        Ok(table) => table.get_file_uris()?.count(),
        Err(_) => 0,
    };
    Ok((current, disk))
}

/// One gauge's value from an OpenMetrics exposition.
fn gauge(text: &str, name: &str) -> anyhow::Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("{name} missing from /metrics"))
}

fn sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}
