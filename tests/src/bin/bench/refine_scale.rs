//! `medallion-bench refine-scale`: what one refinement cycle costs as the
//! number of silver tables grows, idle and with `k` changed tables.
//!
//! For each table count it creates that many 100-row tables (each a source
//! with a current-state silver table) and one gold model, streams them to
//! bronze with the writer in this process, and runs refinement cycles beside
//! it with Delta tables kept open between cycles, as `medallion run` does.
//! Before each cycle the slot moves on (a write to a table that is not a
//! source), so every cycle has a new watermark:
//!
//! - idle: nothing in any source changed;
//! - k changed: `k` source tables got an update each.
//!
//! It prints the wall and CPU time (this process, all threads — the idle
//! writer's keepalives included) per cycle,
//! the median of `rounds`, and the slope per 100 tables. The issue's
//! target: an idle cycle over 400 tables ≤ 100 ms wall and ≤ 50 ms CPU.

use std::time::{Duration, Instant};

use medallion::status::ObjectState;

use anyhow::{Context, bail};

use super::Bench;

/// This process's CPU time (all threads).
pub(super) fn cpu_time() -> Duration {
    medallion::metrics::process_cpu_time()
}

/// Wall and CPU time of one cycle, in milliseconds.
#[derive(Clone, Copy)]
struct Cost {
    wall_ms: f64,
    cpu_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A write to a table that is not a source: the slot moves on, no source
/// changes.
async fn nudge(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    client
        .batch_execute("UPDATE nudge SET v = v + 1")
        .await
        .context("nudge")
}

/// Wait until the slot has confirmed everything written so far. The bench
/// cluster commits asynchronously: the last commits may still be in WAL
/// buffers, behind `pg_current_wal_lsn()` (the write position), so the
/// target is the insert position.
async fn caught_up(client: &tokio_postgres::Client, slot: &str) -> anyhow::Result<()> {
    let target: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done: bool = client
            .query_one(
                "SELECT coalesce(confirmed_flush_lsn >= $2::text::pg_lsn, false) \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot, &target],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(false);
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the sidecar did not reach {target} in 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One table count: (idle, k changed), medians.
fn one(tables: usize, changed: usize, rounds: usize) -> anyhow::Result<(Cost, Cost)> {
    let b = Bench::new()?;
    b.sql(&format!(
        "CREATE TABLE nudge (id int PRIMARY KEY, v int); INSERT INTO nudge VALUES (1, 0); \
         DO $$ BEGIN FOR i IN 1..{tables} LOOP \
           EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v int NOT NULL)', i); \
           EXECUTE format('INSERT INTO t%s SELECT g, g FROM generate_series(1, 100) g', i); \
           PERFORM medallion.add_source(format('t%s', i)); \
         END LOOP; END $$; \
         SELECT medallion.define_gold('g1', 'SELECT count(*) AS n, sum(v) AS s FROM silver.t1')"
    ))?;
    let cfg = b.config();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let (mut client, conn) =
            tokio_postgres::connect(&cfg.database_url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        // The bronze writer runs in this process, as in `medallion run`, so
        // the refiner knows which bronze tables moved.
        let stop = tokio_util::sync::CancellationToken::new();
        let writer = tokio::spawn({
            let (cfg, stop) = (cfg.clone(), stop.clone());
            async move {
                medallion::replicate::run(
                    &cfg,
                    medallion::replicate::RunOptions {
                        until_caught_up: false,
                        ..Default::default()
                    },
                    stop,
                    std::sync::Arc::new(medallion::metrics::Metrics::default()),
                )
                .await
            }
        });
        let tables_kept = medallion::lake::TableCache::default();
        let forced = std::collections::HashSet::new();
        // One cycle: its cost, and the first table that is not `ok`.
        let attempt =
            async |client: &mut tokio_postgres::Client| -> anyhow::Result<(Cost, Option<String>)> {
                caught_up(client, &cfg.slot).await?;
                let w = medallion::refine::watermark(client, &cfg.slot, None)
                    .await?
                    .context("slot")?;
                let (t, c) = (Instant::now(), cpu_time());
                let r =
                    medallion::refine::cycle_with(&cfg, client, w, &forced, &tables_kept).await?;
                let cost = Cost {
                    wall_ms: t.elapsed().as_secs_f64() * 1e3,
                    cpu_ms: (cpu_time() - c).as_secs_f64() * 1e3,
                };
                let ok = r
                    .tables
                    .iter()
                    .filter(|t| t.state == ObjectState::Ok)
                    .count();
                let problem = (ok != tables + 1).then(|| {
                    let t = r.tables.iter().find(|t| t.state != ObjectState::Ok);
                    format!(
                        "{ok} of {} tables ok; e.g. {:?}",
                        tables + 1,
                        t.map(|t| (&t.name, &t.state, &t.error))
                    )
                });
                Ok((cost, problem))
            };
        let cycle = async |client: &mut tokio_postgres::Client| -> anyhow::Result<Cost> {
            match attempt(client).await? {
                (cost, None) => Ok(cost),
                (_, Some(problem)) => bail!(problem),
            }
        };
        // The first cycles wait for the initial copies, then build every
        // silver table and the model; the next proves them up to date.
        let deadline = Instant::now() + Duration::from_secs(600);
        let first = loop {
            match attempt(&mut client).await? {
                (cost, None) => break cost,
                (_, Some(problem)) if Instant::now() > deadline => bail!(problem),
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };
        println!(
            "refine-scale: {tables} tables: first cycle {:.0} ms wall, {:.0} ms CPU",
            first.wall_ms, first.cpu_ms
        );
        nudge(&client).await?;
        cycle(&mut client).await?;
        let mut idle = Vec::new();
        let mut busy = Vec::new();
        for round in 0..rounds {
            nudge(&client).await?;
            idle.push(cycle(&mut client).await?);
            for i in 0..changed {
                let t = 1 + (round * changed + i) % tables;
                client
                    .batch_execute(&format!("UPDATE t{t} SET v = v + 1 WHERE id = 1"))
                    .await
                    .context("change")?;
            }
            busy.push(cycle(&mut client).await?);
        }
        stop.cancel();
        writer.await??;
        let med = |v: &[Cost]| Cost {
            wall_ms: median(v.iter().map(|c| c.wall_ms).collect()),
            cpu_ms: median(v.iter().map(|c| c.cpu_ms).collect()),
        };
        Ok((med(&idle), med(&busy)))
    })
}

pub fn refine_scale(counts: &[usize], changed: usize, rounds: usize) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for &n in counts {
        let (idle, busy) = one(n, changed, rounds.max(1))?;
        println!(
            "refine-scale: {n} tables: idle {:.1} ms wall / {:.1} ms CPU; {changed} changed {:.1} ms wall / {:.1} ms CPU",
            idle.wall_ms, idle.cpu_ms, busy.wall_ms, busy.cpu_ms
        );
        super::growth::figure(
            "refine",
            n as u64,
            idle.wall_ms / 1000.0,
            super::peak_rss_kb(),
        );
        rows.push((n, idle, busy));
    }
    println!(
        "refine-scale: {:>7} {:>14} {:>13} {:>14} {:>13}",
        "tables", "idle wall ms", "idle CPU ms", "k wall ms", "k CPU ms"
    );
    for (n, idle, busy) in &rows {
        println!(
            "refine-scale: {n:>7} {:>14.1} {:>13.1} {:>14.1} {:>13.1}",
            idle.wall_ms, idle.cpu_ms, busy.wall_ms, busy.cpu_ms
        );
    }
    if let (Some(a), Some(z)) = (rows.first(), rows.last())
        && z.0 > a.0
    {
        let per100 = |f: fn(&Cost) -> f64| (f(&z.1) - f(&a.1)) / (z.0 - a.0) as f64 * 100.0;
        println!(
            "refine-scale: idle slope per 100 tables: {:.1} ms wall, {:.1} ms CPU",
            per100(|c| c.wall_ms),
            per100(|c| c.cpu_ms)
        );
    }
    if let Some((_, idle, _)) = rows.iter().find(|r| r.0 == 400) {
        let verdict = if idle.wall_ms <= 100.0 && idle.cpu_ms <= 50.0 {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "refine-scale: target (idle, 400 tables: ≤ 100 ms wall, ≤ 50 ms CPU) {verdict}: {:.1} ms wall, {:.1} ms CPU",
            idle.wall_ms, idle.cpu_ms
        );
    }
    Ok(())
}
