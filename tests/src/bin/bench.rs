//! `medallion-bench`: the bronze path's speed and memory, as ratios against a
//! baseline measured in the same run on the same machine.
//!
//! ```sh
//! cargo build --release -p medallion-tests --bins
//! target/release/medallion-bench all --rows 1000000
//! ```
//!
//! 1. streaming: ≥ 1M row changes in Odoo-shaped transactions; sidecar time to
//!    durable bronze vs `pg_recvlogical` (pgoutput v2, same publication)
//!    draining the same WAL to /dev/null.
//! 2. snapshot: a journal-item-shaped table to bronze vs
//!    `COPY … TO STDOUT (FORMAT binary)` to /dev/null.
//! 3. freshness: source commit → visible in bronze (the Delta commit's
//!    timestamp) p50/p99 at a steady ~1,000 tps.
//! 4. peak RSS of the sidecar while it replicates one large transaction.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use medallion_tests::cluster::{ClusterOptions, PgCluster};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Clone, Copy)]
enum What {
    Streaming {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
    },
    Snapshot {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
    },
    Freshness {
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value_t = 1000)]
        tps: u64,
    },
    Rss {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
    },
    All {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
    },
}

const DB: &str = "bench";
const TABLE_DDL: &str = "CREATE TABLE account_move_line (id serial PRIMARY KEY, move_id int NOT NULL, \
    journal_id int, company_id int, account_id int, partner_id int, currency_id int NOT NULL, \
    name varchar, parent_state varchar, display_type varchar NOT NULL, date date, \
    debit numeric, credit numeric, balance numeric, amount_residual numeric, quantity numeric, \
    price_unit numeric, analytic_distribution jsonb, reconciled boolean, \
    create_uid int, write_uid int, create_date timestamp, write_date timestamp)";

fn insert_sql(from: u64, to: u64) -> String {
    format!(
        "INSERT INTO account_move_line (move_id, journal_id, company_id, account_id, partner_id, currency_id, \
           name, parent_state, display_type, date, debit, credit, balance, amount_residual, quantity, price_unit, \
           analytic_distribution, reconciled, create_uid, write_uid, create_date, write_date) \
         SELECT g / 4, 1, 1, 1 + g % 6, 2 + g % 500, 1, 'INV/2025/' || (g / 4), 'posted', 'product', \
           DATE '2025-01-01' + (g % 365)::int, CASE WHEN g % 2 = 0 THEN round(g * 1.37 % 10000, 2) ELSE 0 END, \
           CASE WHEN g % 2 = 1 THEN round(g * 1.37 % 10000, 2) ELSE 0 END, round(g * 0.5 % 777, 2), 0, 1, \
           round(g * 1.37 % 10000, 2), CASE WHEN g % 10 = 0 THEN '{{\"1\": 100.0}}'::jsonb END, false, 2, 2, \
           now() at time zone 'UTC', now() at time zone 'UTC' FROM generate_series({from}, {to}) g"
    )
}

struct Bench {
    cluster: PgCluster,
    dir: tempfile::TempDir,
    sidecar: PathBuf,
}

impl Bench {
    fn new() -> anyhow::Result<Bench> {
        let cluster = PgCluster::start_with(ClusterOptions {
            extra_conf: vec![
                "synchronous_commit = off".into(),
                "max_wal_size = '4GB'".into(),
            ],
        })?;
        cluster.create_db(DB)?;
        cluster.sql(DB, "CREATE EXTENSION pg_medallion")?;
        cluster.sql(DB, TABLE_DDL)?;
        let exe = std::env::current_exe()?;
        let sidecar = exe.with_file_name("medallion-sidecar");
        if !sidecar.exists() {
            bail!(
                "{} missing: cargo build --release -p medallion-tests --bins",
                sidecar.display()
            );
        }
        Ok(Bench {
            cluster,
            dir: tempfile::tempdir()?,
            sidecar,
        })
    }

    fn lake(&self) -> PathBuf {
        self.dir.path().join("lake")
    }

    fn sidecar(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.sidecar);
        c.args(args)
            .env("MEDALLION_DATABASE_URL", self.cluster.url(DB))
            .env("MEDALLION_LAKE_URL", self.lake())
            .env("MEDALLION_LOG", "warn")
            .stdout(Stdio::null());
        c
    }

    fn catch_up(&self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let st = self.sidecar(&["run", "--until-caught-up"]).status()?;
        if !st.success() {
            bail!("sidecar failed: {st}");
        }
        Ok(t.elapsed())
    }

    fn sql(&self, sql: &str) -> anyhow::Result<String> {
        Ok(self.cluster.sql(DB, sql)?.trim().to_string())
    }

    /// Insert `rows` journal items in Odoo-shaped transactions of 1–4,000 rows.
    fn workload(&self, rows: u64) -> anyhow::Result<()> {
        let mut next = self
            .sql("SELECT coalesce(max(id), 0) + 1 FROM account_move_line")?
            .parse::<u64>()?;
        let end = next + rows;
        let mut script = String::new();
        let mut i = 0u64;
        while next < end {
            let size = [20u64, 46, 4000, 120, 1, 300][(i % 6) as usize].min(end - next);
            script.push_str("BEGIN;\n");
            script.push_str(&insert_sql(next, next + size - 1));
            script.push_str(";\nCOMMIT;\n");
            next += size;
            i += 1;
        }
        let path = self.dir.path().join("workload.sql");
        std::fs::write(&path, script)?;
        self.cluster
            .psql(DB, &["-f", path.to_str().context("path")?])?;
        Ok(())
    }
}

fn streaming(rows: u64) -> anyhow::Result<(f64, f64)> {
    let b = Bench::new()?;
    b.sql("SELECT medallion.add_source('account_move_line')")?;
    b.catch_up()?;
    b.sql("SELECT pg_create_logical_replication_slot('baseline', 'pgoutput')")?;
    b.workload(rows)?;
    let end = b.sql("SELECT pg_current_wal_lsn()")?;
    let t = Instant::now();
    let st = Command::new(b.cluster.bin("pg_recvlogical"))
        .args([
            "-d",
            &b.cluster.url(DB),
            "-S",
            "baseline",
            "--start",
            "-E",
            &end,
            "-f",
            "/dev/null",
        ])
        .args([
            "-o",
            "proto_version=2",
            "-o",
            "publication_names=medallion",
            "-o",
            "streaming=on",
        ])
        .status()?;
    if !st.success() {
        bail!("pg_recvlogical failed");
    }
    let baseline = t.elapsed().as_secs_f64();
    let ours = b.catch_up()?.as_secs_f64();
    println!(
        "streaming: {rows} row changes: pg_recvlogical {baseline:.2} s, medallion {ours:.2} s to durable bronze, ratio {:.2}x (target <= 1.25x)",
        ours / baseline
    );
    Ok((baseline, ours))
}

fn snapshot(rows: u64) -> anyhow::Result<(f64, f64)> {
    let b = Bench::new()?;
    let mut done = 0;
    while done < rows {
        let n = (rows - done).min(500_000);
        b.sql(&insert_sql(done + 1, done + n))?;
        done += n;
    }
    b.sql("VACUUM ANALYZE account_move_line")?;
    let t = Instant::now();
    let st = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "'{}' -X -q -d '{}' -c 'COPY account_move_line TO STDOUT (FORMAT binary)' > /dev/null",
            b.cluster.bin("psql").display(),
            b.cluster.url(DB)
        ))
        .status()?;
    if !st.success() {
        bail!("COPY failed");
    }
    let baseline = t.elapsed().as_secs_f64();
    b.sql("SELECT medallion.add_source('account_move_line')")?;
    let ours = b.catch_up()?.as_secs_f64();
    println!(
        "snapshot: {rows} rows: COPY (FORMAT binary) {baseline:.2} s, medallion {ours:.2} s to bronze, ratio {:.2}x (target <= 2x)",
        ours / baseline
    );
    Ok((baseline, ours))
}

/// Commit time of each Delta version (ms since the epoch) and the files it added.
fn delta_versions(table: &Path) -> anyhow::Result<Vec<(i64, Vec<String>)>> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(table.join("_delta_log"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    entries.sort();
    for p in entries {
        let mut ts = 0;
        let mut files = Vec::new();
        for line in std::fs::read_to_string(&p)?.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            if let Some(t) = v.pointer("/commitInfo/timestamp").and_then(|t| t.as_i64()) {
                ts = t;
            }
            if let Some(path) = v.pointer("/add/path").and_then(|t| t.as_str()) {
                files.push(path.to_string());
            }
        }
        out.push((ts, files));
    }
    Ok(out)
}

fn freshness(seconds: u64, tps: u64) -> anyhow::Result<(f64, f64)> {
    use arrow::array::AsArray;
    let b = Bench::new()?;
    b.sql("SELECT medallion.add_source('account_move_line')")?;
    b.catch_up()?;
    let mut child = b.sidecar(&["run"]).spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    // ~tps single-row transactions through pgbench.
    let script = b.dir.path().join("fresh.sql");
    std::fs::write(&script, format!("{};\n", insert_sql(1, 1)))?;
    let st = Command::new(b.cluster.bin("pgbench"))
        .args([
            "-n",
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-R",
            &tps.to_string(),
            "-f",
        ])
        .arg(&script)
        .arg(b.cluster.url(DB))
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("pgbench failed");
    }
    std::thread::sleep(Duration::from_secs(3));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait()?;
    let table = medallion_tests::lake::bronze_dir(&b.lake(), "public", "account_move_line");
    let mut lat = Vec::new();
    for (ts_ms, files) in delta_versions(&table)? {
        for f in files {
            let file = std::fs::File::open(table.join(&f))?;
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?
                    .build()?;
            for batch in reader {
                let batch = batch?;
                let i = batch.schema().index_of("_mdl_commit_ts")?;
                let op = batch
                    .column(batch.schema().index_of("_mdl_op")?)
                    .as_string::<i32>()
                    .clone();
                let c = batch
                    .column(i)
                    .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
                for r in 0..c.len() {
                    if op.value(r) != "snapshot" {
                        lat.push((ts_ms * 1000 - c.value(r)) as f64 / 1e6);
                    }
                }
            }
        }
    }
    if lat.is_empty() {
        bail!("no streamed rows");
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    let (p50, p99) = (p(0.5), p(0.99));
    println!(
        "freshness: {} commits at ~{tps} tps for {seconds} s: commit -> visible in bronze p50 {p50:.3} s, p99 {p99:.3} s (target p99 < 2 s)",
        lat.len()
    );
    Ok((p50, p99))
}

fn rss(rows: u64) -> anyhow::Result<u64> {
    let b = Bench::new()?;
    b.sql("SELECT medallion.add_source('account_move_line')")?;
    b.catch_up()?;
    b.sql(&format!("BEGIN; {}; COMMIT", insert_sql(1, rows)))?;
    let mut child = b.sidecar(&["run", "--until-caught-up"]).spawn()?;
    let mut peak_kb = 0u64;
    loop {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            && let Some(l) = s.lines().find(|l| l.starts_with("VmHWM:"))
        {
            let kb: u64 = l
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            peak_kb = peak_kb.max(kb);
        }
        if let Some(st) = child.try_wait()? {
            if !st.success() {
                bail!("sidecar failed: {st}");
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let n = b.sql("SELECT count(*) FROM account_move_line")?;
    println!(
        "rss: one transaction of {n} rows: sidecar peak RSS {} MiB (target < 512 MiB)",
        peak_kb / 1024
    );
    Ok(peak_kb / 1024)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.what {
        What::Streaming { rows } => drop(streaming(rows)?),
        What::Snapshot { rows } => drop(snapshot(rows)?),
        What::Freshness { seconds, tps } => drop(freshness(seconds, tps)?),
        What::Rss { rows } => drop(rss(rows)?),
        What::All { rows } => {
            streaming(rows)?;
            snapshot(rows)?;
            freshness(20, 1000)?;
            rss(rows)?;
        }
    }
    Ok(())
}
