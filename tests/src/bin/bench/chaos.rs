//! `medallion-bench chaos`: an Odoo-shaped mixed workload while the sidecar
//! is killed (-9) at random, Postgres is crashed and restarted, and the
//! object store (Ceph RGW) goes away; then the lake must equal the source
//! exactly. Not a timed test: it prints counts, and fails on any difference.
//!
//! ```text
//!  workload ──► Postgres ──► sidecar (run: bronze + silver + gold on S3)
//!      │            ▲  crash/restart ≥ 5      ▲ kill -9 ≥ 50, RGW down ≥ 2
//!      └─ chaos_txlog: per committed transaction, rows inserted/updated/deleted per table
//!  afterwards: bronze change rows per op = snapshot + txlog sums, one snapshot
//!  generation, no (lsn, seq, op) twice; bronze state, silver and gold = Postgres
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use medallion_tests::cluster::{ClusterOptions, PgCluster};
use medallion_tests::s3::CephS3;
use medallion_tests::{lake, oracle};
use rand::{Rng, SeedableRng};

const DB: &str = "chaos";
const TABLES: [&str; 3] = ["res_partner", "account_move", "account_move_line"];

const SCHEMA: &str = "
CREATE TABLE res_partner (id serial PRIMARY KEY, name varchar NOT NULL, email varchar, comment text);
CREATE TABLE account_move (id serial PRIMARY KEY, name varchar NOT NULL, state varchar NOT NULL,
    partner_id int, amount_total numeric NOT NULL DEFAULT 0, narration text);
CREATE TABLE account_move_line (id serial PRIMARY KEY, move_id int NOT NULL, account_id int NOT NULL,
    name varchar, debit numeric(16,2) NOT NULL, credit numeric(16,2) NOT NULL, note text);
ALTER TABLE account_move_line ALTER COLUMN note SET STORAGE EXTERNAL;
ALTER TABLE res_partner ALTER COLUMN comment SET STORAGE EXTERNAL;
CREATE TABLE chaos_txlog (id bigserial PRIMARY KEY, table_name text NOT NULL, ins int NOT NULL,
    upd int NOT NULL, del int NOT NULL);
INSERT INTO res_partner (name, email, comment) SELECT 'Partner ' || g, 'p' || g || '@example.com',
    repeat(md5(g::text), 100) FROM generate_series(1, 300) g;
INSERT INTO account_move (name, state, partner_id, amount_total) SELECT 'INV/' || g, 'posted', 1 + g % 300, g
    FROM generate_series(1, 2000) g;
INSERT INTO account_move_line (move_id, account_id, name, debit, credit, note)
    SELECT 1 + g % 2000, 1 + g % 40, 'line ' || g, g % 97, 0, CASE WHEN g % 5 = 0 THEN repeat(md5(g::text), 80) END
    FROM generate_series(1, 6000) g;
";

const GOLD: &str = "
SELECT medallion.add_source('res_partner'); SELECT medallion.add_source('account_move');
SELECT medallion.add_source('account_move_line');
SELECT medallion.define_gold('move_totals', $$SELECT move_id, sum(debit) AS debit, sum(credit) AS credit,
    count(*) AS lines FROM silver.account_move_line GROUP BY move_id$$);
SELECT medallion.define_gold('moves_by_state', $$SELECT m.state, count(*) AS moves, sum(m.amount_total) AS total,
    count(DISTINCT p.id) AS partners FROM silver.account_move m LEFT JOIN silver.res_partner p
    ON p.id = m.partner_id GROUP BY m.state$$);
";

struct Counters {
    committed: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
    /// Progress of the chaos (0–100) as the killer sees it.
    progress: AtomicU64,
}

/// One transaction of the workload, with its row counts per table in `chaos_txlog`.
async fn transaction(
    c: &mut tokio_postgres::Client,
    rng: &mut rand_chacha::ChaCha8Rng,
    big: bool,
    alter: bool,
) -> Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    let mut log: Vec<(&str, u64, u64, u64)> = Vec::new();
    if alter {
        // A module upgrade: a new column, no default, then filled.
        tx.batch_execute(
            "ALTER TABLE account_move_line ADD COLUMN IF NOT EXISTS analytic_distribution jsonb",
        )
        .await?;
        let n = tx
            .execute(
                "UPDATE account_move_line SET analytic_distribution = jsonb_build_object(account_id::text, 100) \
                 WHERE id % 50 = 0",
                &[],
            )
            .await?;
        log.push(("account_move_line", 0, n, 0));
    } else if big {
        // Large enough to be streamed (logical_decoding_work_mem = 64kB).
        let n = tx
            .execute(
                "INSERT INTO account_move_line (move_id, account_id, name, debit, credit) \
                 SELECT 1 + g % 2000, 7, 'closing ' || g, 0, g % 13 FROM generate_series(1, 30000) g",
                &[],
            )
            .await?;
        log.push(("account_move_line", n, 0, 0));
    } else {
        match rng.gen_range(0..6) {
            0 | 1 => {
                let lines = rng.gen_range(1..6i32);
                let partner = rng.gen_range(1..300i32);
                let id: i32 = tx
                    .query_one(
                        "INSERT INTO account_move (name, state, partner_id) VALUES ('draft', 'draft', $1) RETURNING id",
                        &[&partner],
                    )
                    .await?
                    .get(0);
                let n = tx
                    .execute(
                        "INSERT INTO account_move_line (move_id, account_id, name, debit, credit, note) \
                         SELECT $1, 1 + g, 'l' || g, g * 10, 0, CASE WHEN g = 1 THEN repeat(md5(random()::text), 90) END \
                         FROM generate_series(1, $2) g",
                        &[&id, &lines],
                    )
                    .await?;
                let u = tx
                    .execute(
                        "UPDATE account_move SET state = 'posted', amount_total = $2::int4 * 10, name = 'INV/N/' || id WHERE id = $1",
                        &[&id, &lines],
                    )
                    .await?;
                log.push(("account_move", 1, u, 0));
                log.push(("account_move_line", n, 0, 0));
            }
            2 => {
                // TOASTed note rewritten, then an update that leaves it unchanged.
                let k = rng.gen_range(1..600i32);
                let a = tx
                    .execute(
                        "UPDATE account_move_line SET note = repeat(md5(random()::text), 90) WHERE id % 600 = $1",
                        &[&k],
                    )
                    .await?;
                let b = tx
                    .execute(
                        "UPDATE account_move_line SET credit = credit + 1 WHERE id % 600 = $1",
                        &[&k],
                    )
                    .await?;
                log.push(("account_move_line", 0, a + b, 0));
            }
            3 => {
                let k = rng.gen_range(1..300i32);
                let n = tx
                    .execute(
                        "UPDATE res_partner SET email = 'new' || id || '.' || $1 || '@example.com' WHERE id % 97 = $1 % 97",
                        &[&k],
                    )
                    .await?;
                log.push(("res_partner", 0, n, 0));
            }
            4 => {
                let id: Option<i32> = tx
                    .query_opt(
                        "SELECT id FROM account_move WHERE state = 'posted' ORDER BY random() LIMIT 1",
                        &[],
                    )
                    .await?
                    .map(|r| r.get(0));
                if let Some(id) = id {
                    let l = tx
                        .execute("DELETE FROM account_move_line WHERE move_id = $1", &[&id])
                        .await?;
                    let m = tx
                        .execute("DELETE FROM account_move WHERE id = $1", &[&id])
                        .await?;
                    log.push(("account_move_line", 0, 0, l));
                    log.push(("account_move", 0, 0, m));
                }
            }
            _ => {
                let n = tx
                    .execute(
                        "INSERT INTO res_partner (name, email) VALUES ('New partner', 'x@example.com')",
                        &[],
                    )
                    .await?;
                log.push(("res_partner", n, 0, 0));
            }
        }
    }
    for (t, i, u, d) in log {
        tx.execute(
            "INSERT INTO chaos_txlog (table_name, ins, upd, del) VALUES ($1, $2, $3, $4)",
            &[&t, &(i as i32), &(u as i32), &(d as i32)],
        )
        .await?;
    }
    tx.commit().await
}

async fn workload(url: String, counters: Arc<Counters>, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (mut big_done, mut alter_done) = (false, false);
    while !counters.stop.load(Ordering::SeqCst) {
        let Ok((mut client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        tokio::spawn(conn);
        while !counters.stop.load(Ordering::SeqCst) {
            let p = counters.progress.load(Ordering::SeqCst);
            let alter = !alter_done && p >= 40;
            let big = !big_done && p >= 60;
            match transaction(&mut client, &mut rng, big, alter).await {
                Ok(()) => {
                    counters.committed.fetch_add(1, Ordering::SeqCst);
                    alter_done |= alter;
                    big_done |= big && !alter;
                }
                Err(e) => {
                    counters.failed.fetch_add(1, Ordering::SeqCst);
                    if client.is_closed() || e.is_closed() {
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn spawn_sidecar(
    bin: &std::path::Path,
    url: &str,
    s3: &CephS3,
    log: &std::fs::File,
) -> anyhow::Result<Child> {
    let mut c = Command::new(bin);
    c.args(["run"])
        .env("MEDALLION_DATABASE_URL", url)
        .env("MEDALLION_LAKE_URL", s3.url("lake"))
        .env("MEDALLION_FLUSH_INTERVAL_MS", "200")
        .env("MEDALLION_REFINE_INTERVAL_MS", "500")
        .env("MEDALLION_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log.try_clone()?));
    for (k, v) in s3.env() {
        c.env(k, v);
    }
    Ok(c.spawn()?)
}

fn finish(bin: &std::path::Path, url: &str, s3: &CephS3, args: &[&str]) -> anyhow::Result<String> {
    let mut c = Command::new(bin);
    c.args(args)
        .env("MEDALLION_DATABASE_URL", url)
        .env("MEDALLION_LAKE_URL", s3.url("lake"))
        .env("MEDALLION_LOG", "warn");
    for (k, v) in s3.env() {
        c.env(k, v);
    }
    let out = c.output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("medallion {args:?} failed: {text}");
    }
    Ok(text)
}

pub fn chaos(kills: usize, pg_restarts: usize, outages: usize, seed: u64) -> anyhow::Result<()> {
    let bin = std::env::current_exe()?.with_file_name("medallion-sidecar");
    if !bin.exists() {
        bail!(
            "{} missing: cargo build -p medallion-tests --bins",
            bin.display()
        );
    }
    let mut cluster = PgCluster::start_with(ClusterOptions {
        extra_conf: vec!["logical_decoding_work_mem = '64kB'".into()],
    })?;
    cluster.create_db(DB)?;
    cluster.sql(DB, "CREATE EXTENSION pg_medallion")?;
    cluster.psql(DB, &["-q", "-c", SCHEMA])?;
    cluster.psql(DB, &["-q", "-c", GOLD])?;
    let s3 = CephS3::start("medallion").context("start the private S3 server (Ceph RGW)")?;
    let url = cluster.url(DB);
    let base: BTreeMap<&str, u64> = TABLES
        .iter()
        .map(|t| {
            Ok((
                *t,
                cluster
                    .sql(DB, &format!("SELECT count(*) FROM {t}"))?
                    .trim()
                    .parse()?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    // The initial copy, undisturbed: its snapshot is the base rows exactly.
    finish(&bin, &url, &s3, &["run", "--until-caught-up"])?;

    let rt = tokio::runtime::Runtime::new()?;
    let counters = Arc::new(Counters {
        committed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        progress: AtomicU64::new(0),
    });
    let wl = rt.spawn(workload(url.clone(), counters.clone(), seed));
    let log_path = std::env::temp_dir().join(format!("medallion-chaos-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let mut sidecar = spawn_sidecar(&bin, &url, &s3, &log)?;
    let (mut killed, mut exited_alone, mut restarts, mut down) = (0usize, 0usize, 0usize, 0usize);
    let restart_every = (kills / pg_restarts.max(1)).max(1);
    let outage_every = (kills / (outages + 1)).max(1);
    let start = Instant::now();
    while killed < kills {
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..2500)));
        counters
            .progress
            .store((killed * 100 / kills) as u64, Ordering::SeqCst);
        if sidecar.try_wait()?.is_some() {
            // It stopped by itself (an error it cannot retry): counted, restarted.
            exited_alone += 1;
        } else {
            sidecar.kill()?;
            killed += 1;
        }
        let _ = sidecar.wait();
        if killed % restart_every == 0 && restarts < pg_restarts {
            cluster.crash()?;
            std::thread::sleep(Duration::from_millis(rng.gen_range(200..1500)));
            cluster.start_again()?;
            restarts += 1;
        }
        let outage = killed % outage_every == 0 && down < outages && killed > 0;
        if outage {
            s3.set_gateway(false)?;
        }
        sidecar = spawn_sidecar(&bin, &url, &s3, &log)?;
        if outage {
            // The sidecar runs (and retries) against an absent object store.
            std::thread::sleep(Duration::from_millis(rng.gen_range(3000..6000)));
            s3.set_gateway(true)?;
            down += 1;
        }
    }
    counters.stop.store(true, Ordering::SeqCst);
    rt.block_on(wl)?;
    sidecar.kill()?;
    let _ = sidecar.wait();
    let chaos_secs = start.elapsed().as_secs_f64();
    finish(&bin, &url, &s3, &["run", "--until-caught-up"])?;
    finish(&bin, &url, &s3, &["refine"])?;

    // Verification.
    let storage = s3.storage_options();
    let root = url::Url::parse(&format!("{}/", s3.url("lake")))?;
    let mut problems = Vec::new();
    println!(
        "chaos: {chaos_secs:.0} s, {} committed transactions ({} failed by the faults), \
         sidecar killed {killed} times (it exited by itself {exited_alone} times), \
         Postgres crashed {restarts} times, object store down {down} times",
        counters.committed.load(Ordering::SeqCst),
        counters.failed.load(Ordering::SeqCst)
    );
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let streamed: i64 = client
            .query_one(
                "SELECT coalesce(sum(stream_txns), 0)::int8 FROM pg_stat_replication_slots WHERE slot_name = 'medallion'",
                &[],
            )
            .await?
            .get(0);
        let alter_done: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'account_move_line'::regclass \
                 AND attname = 'analytic_distribution')",
                &[],
            )
            .await?
            .get(0);
        println!("chaos: streamed transactions {streamed}, module column added: {alter_done}");
        if streamed == 0 || !alter_done {
            problems.push("the large (streamed) transaction or the ALTER TABLE never ran".to_string());
        }
        for t in TABLES {
            let r = client
                .query_one(
                    "SELECT coalesce(sum(ins), 0)::int8, coalesce(sum(upd), 0)::int8, coalesce(sum(del), 0)::int8 \
                     FROM chaos_txlog WHERE table_name = $1",
                    &[&t],
                )
                .await?;
            let (ins, upd, del): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
            let batches = lake::read_table_url(&lake::bronze_url(&root, "public", t), &storage).await?;
            let rows = lake::change_rows(&batches);
            let mut by_op: BTreeMap<&str, i64> = BTreeMap::new();
            for r in &rows {
                *by_op.entry(r.op.as_str()).or_default() += 1;
            }
            let generations = rows
                .iter()
                .filter(|r| r.op == "snapshot")
                .map(|r| r.lsn)
                .collect::<BTreeSet<_>>()
                .len();
            let dups = lake::duplicate_changes(&rows);
            if dups > 0 {
                let mut seen = BTreeSet::new();
                let twice: BTreeSet<i64> = rows
                    .iter()
                    .filter(|r| !seen.insert((r.lsn, r.seq, r.op.clone())))
                    .map(|r| r.lsn)
                    .collect();
                println!(
                    "chaos: public.{t}: {} transactions appear twice, commit LSNs {:X?}",
                    twice.len(),
                    twice.iter().take(8).collect::<Vec<_>>()
                );
            }
            let expected: BTreeMap<&str, i64> = [
                ("snapshot", base[t] as i64),
                ("insert", ins),
                ("update", upd),
                ("delete", del),
            ]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
            println!(
                "chaos: bronze public.{t}: {by_op:?} (source log {expected:?}), {generations} snapshot generation(s), {dups} duplicates"
            );
            if by_op != expected || generations != 1 || dups != 0 {
                problems.push(format!("bronze public.{t} holds {by_op:?}, expected {expected:?}"));
            }
            let cols = oracle::source_columns(&client, "public", t).await?;
            let state = lake::current_state(&rows, &["id"]);
            if let Err(e) = oracle::rows_equal_source(&client, "public", t, &cols, state.values()).await {
                problems.push(format!("bronze public.{t}: {e}"));
            }
            let silver = lake::read_table_url(&root.join(&format!("silver/{t}/"))?, &storage).await?;
            let silver_rows = lake::rows_as_text(&silver);
            if let Err(e) = oracle::rows_equal_source(&client, "public", t, &cols, silver_rows.iter()).await {
                problems.push(format!("silver.{t}: {e}"));
            }
            println!("chaos: silver.{t}: {} rows compared with Postgres", silver_rows.len());
        }
        // Gold: each model's SQL run by Postgres over the source (silver.* as views).
        client
            .batch_execute(
                "CREATE SCHEMA silver; \
                 CREATE VIEW silver.res_partner AS SELECT * FROM public.res_partner; \
                 CREATE VIEW silver.account_move AS SELECT * FROM public.account_move; \
                 CREATE VIEW silver.account_move_line AS SELECT * FROM public.account_move_line;",
            )
            .await?;
        for m in ["move_totals", "moves_by_state"] {
            let q: String = client
                .query_one("SELECT query FROM medallion.gold_models WHERE name = $1", &[&m])
                .await?
                .get(0);
            client
                .batch_execute(&format!("CREATE TABLE public.oracle_{m} AS {q}"))
                .await?;
            let cols = oracle::source_columns(&client, "public", &format!("oracle_{m}")).await?;
            let gold = lake::read_table_url(&root.join(&format!("gold/{m}/"))?, &storage).await?;
            let rows = lake::rows_as_text(&gold);
            if let Err(e) =
                oracle::rows_equal_source(&client, "public", &format!("oracle_{m}"), &cols, rows.iter()).await
            {
                problems.push(format!("gold.{m}: {e}"));
            }
            println!("chaos: gold.{m}: {} rows compared with Postgres running its SQL", rows.len());
        }
        anyhow::Ok(())
    })?;
    if killed < kills || restarts < pg_restarts || down < outages {
        problems.push("fewer faults than asked".into());
    }
    if problems.is_empty() {
        println!("chaos: OK: every change exactly once; bronze, silver and gold equal Postgres");
        let _ = std::fs::remove_file(&log_path);
        Ok(())
    } else {
        for p in &problems {
            println!("chaos: FAIL: {p}");
        }
        // Keep the evidence: the cluster and the S3 server stay up.
        println!(
            "chaos: kept for inspection: Postgres {url}, lake {} (endpoint {})",
            s3.url("lake"),
            s3.endpoint()
        );
        std::mem::forget(s3);
        std::mem::forget(cluster);
        bail!(
            "chaos found {} problem(s); sidecar log: {}",
            problems.len(),
            log_path.display()
        )
    }
}
