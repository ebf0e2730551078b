//! Refinement cycles: silver and gold brought to one watermark.
//!
//! ```text
//!  W = confirmed_flush_lsn of the slot   (every transaction with commit LSN < W
//!      │                                  is durable in bronze: acknowledged
//!      ▼                                  only after its bronze commit)
//!  silver tables ── each to exactly W (or waiting / failed), up to
//!      │            silver_parallelism at once; then, in order, their
//!      │            publications and status rows
//!      ▼
//!  gold DAG ─────── models whose inputs are all at W, in dependency order
//!      ▼
//!  publish ──────── optional copy into Postgres
//!      ▼
//!  medallion.runs, medallion.table_status
//! ```
//!
//! Because every table of a cycle is cut at the same source LSN, a
//! transaction that touched `sale_order` and `sale_order_line` is either in
//! both silver tables and every gold model computed from them, or in none.
//! Each Delta commit records the LSN it reflects (`txn` version and
//! `medallion.lsn` in `commitInfo`); `medallion.status()` shows it per table.

use std::collections::{HashMap, HashSet};

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::catalog;
use crate::catalog::Field;
use crate::error::{Error, Result, RetryPolicy};
use crate::expectations::RuleCount;
use crate::gold::Input;
use crate::lake::{self, Lake};
use crate::lsn::Lsn;
pub use crate::status::TableOutcome;
use crate::status::{self, Layer, ObjectState};

mod gold_models;

/// What a cycle did.
#[derive(Debug, Clone, Default)]
pub struct CycleReport {
    pub watermark: Lsn,
    pub tables: Vec<TableOutcome>,
}

impl CycleReport {
    /// Tables that failed this cycle.
    pub fn failures(&self) -> Vec<&TableOutcome> {
        self.tables
            .iter()
            .filter(|t| t.state == ObjectState::Failed)
            .collect()
    }
}

/// The watermark to refine to: the slot's confirmed position (everything
/// before it is durable in every bronze table), never below `floor`.
///
/// Postgres 15 writes a slot's `confirmed_flush_lsn` to disk only at a
/// checkpoint or when its restart point moves, so after a crash of Postgres
/// the slot can report a position older than one silver already reflects.
/// `floor` is such a position (see [`refined_floor`]): one the slot once
/// confirmed, so durable in bronze, and silver and gold never go back to
/// an older one. A floor beyond the server's flushed WAL (a cluster restored
/// from an older backup) is not one this server confirmed: it is ignored,
/// with a warning.
pub async fn watermark(client: &Client, slot: &str, floor: Option<Lsn>) -> Result<Option<Lsn>> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn, pg_catalog.pg_current_wal_flush_lsn() \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(Error::pg("read slot position"))?;
    let Some(row) = row else { return Ok(None) };
    let confirmed: Option<Lsn> = row.field(0)?;
    let flushed: Option<Lsn> = row.field(1)?;
    Ok(choose_watermark(confirmed, flushed, floor))
}

/// [`watermark`]'s choice: the slot's `confirmed` position, or `floor` when
/// it is newer and within the server's `flushed` WAL.
fn choose_watermark(
    confirmed: Option<Lsn>,
    flushed: Option<Lsn>,
    floor: Option<Lsn>,
) -> Option<Lsn> {
    match (confirmed, floor) {
        (Some(c), Some(f)) if f > c && flushed.is_some_and(|w| f <= w) => {
            tracing::debug!(slot_position = %c,
                refined = %f,
                "the slot reports an older position than silver reflects (Postgres restarted); refining from the newer");
            Some(f)
        }
        (Some(c), Some(f)) if f > c => {
            tracing::warn!(refined = %f,
                "silver reflects a position beyond this server's WAL (restored from a backup?): \
                 ignored; resync the sources to rebuild the lake from this server");
            Some(c)
        }
        (c, _) => c,
    }
}

/// Whether the refine loop runs a cycle at watermark `w`: when it moved
/// since the `last` cycle's, when a refresh was asked for or a definition
/// changed, and at least every twelve intervals (interval and manual
/// models come due with time alone).
fn cycle_due(
    w: Lsn,
    last: Option<Lsn>,
    asked: bool,
    since_last: Duration,
    interval: Duration,
) -> bool {
    last != Some(w) || asked || since_last >= interval * 12
}

/// The highest position a silver table of this slot's lake already reflects:
/// the floor [`watermark`] never goes below (read once when a refiner starts;
/// a running refiner raises it with every cycle).
pub async fn refined_floor(
    cfg: &Config,
    silver: &[crate::catalog::SilverDef],
) -> Result<Option<Lsn>> {
    let lake = Lake::from_config(cfg)?;
    let tables = lake::TableCache::default();
    let refiner = Refiner::new(cfg, &lake, &tables);
    let mut floor = None;
    for def in silver {
        match refiner.reflected(&def.name).await {
            Ok(v) => floor = floor.max(v),
            // A table that cannot be read fails alone in the cycle; the
            // floor comes from the others.
            Err(e) => tracing::debug!(silver = %def.name, error = %e, "no refined position"),
        }
    }
    Ok(floor)
}

/// The expectation counts of a run as `medallion.runs.expectations` holds them.
fn expectations_json(
    counts: &std::collections::BTreeMap<String, RuleCount>,
) -> Option<serde_json::Value> {
    (!counts.is_empty()).then(|| serde_json::to_value(counts).unwrap_or_default())
}

/// Errors that stop one table, not the cycle: everything but transient ones.
fn table_error(e: Error) -> Result<String> {
    match e.retry_policy() {
        RetryPolicy::RetryOnTimer => Err(e),
        _ => Ok(e.to_string()),
    }
}

/// A table or model whose publication failed definitely fails alone (the
/// lake table is written; its Postgres copy is not): visible in
/// `medallion.status()`, everything else goes on.
fn publish_failed(out: TableOutcome, e: Error) -> Result<TableOutcome> {
    let message = table_error(e)?;
    tracing::error!(layer = %out.layer, name = %out.name, error = %message, "publication stopped");
    Ok(TableOutcome::failed(
        out.layer,
        &out.name,
        format!("publish: {message}"),
    ))
}

/// One silver table's refresh: when it started, how long it took, what it did.
type SilverRun = (
    chrono::DateTime<chrono::Utc>,
    Duration,
    Result<crate::silver::SilverReport>,
);

/// Refresh every silver table to `w`, up to `silver_parallelism` at a time,
/// each in a task of its own; the results in `silver`'s order.
///
/// Silver tables are independent: each reads its own bronze table and
/// writes only itself (and its quarantine), so running them side by side
/// changes nothing any of them holds. Each fails alone as before: a task
/// that panicked is that table's error. What follows a refresh (its
/// publication, its status row) runs afterwards through the cycle's one
/// connection, in `silver`'s order.
async fn refresh_silver(
    cfg: &Config,
    lake: &Lake,
    tables: &lake::TableCache,
    silver: &[catalog::SilverDef],
    w: Lsn,
) -> Vec<SilverRun> {
    let parallel = cfg.silver_parallelism.max(1);
    // One copy of the settings for every task of the cycle (an idle cycle
    // starts one per table).
    let shared = std::sync::Arc::new((cfg.clone(), lake.clone(), tables.clone()));
    let mut done: Vec<Option<SilverRun>> = silver.iter().map(|_| None).collect();
    let mut tasks: tokio::task::JoinSet<Result<crate::silver::SilverReport>> =
        tokio::task::JoinSet::new();
    // Which table a task refreshes, and since when.
    let mut which: HashMap<tokio::task::Id, (usize, chrono::DateTime<chrono::Utc>, Instant)> =
        HashMap::new();
    let mut next = 0;
    loop {
        while tasks.len() < parallel && next < silver.len() {
            let (shared, def) = (shared.clone(), silver[next].clone());
            let task = tasks.spawn(async move {
                let (cfg, lake, tables) = &*shared;
                Refiner::new(cfg, lake, tables).refresh(&def, w).await
            });
            which.insert(task.id(), (next, chrono::Utc::now(), Instant::now()));
            next += 1;
        }
        let Some(joined) = tasks.join_next_with_id().await else {
            break;
        };
        let (id, report) = match joined {
            Ok((id, report)) => (id, report),
            // A task that panicked: its table fails alone.
            Err(e) => (
                e.id(),
                Err(Error::Protocol(format!(
                    "the silver refresh stopped unexpectedly: {e}"
                ))),
            ),
        };
        if let Some((i, started, clock)) = which.remove(&id) {
            done[i] = Some((started, clock.elapsed(), report));
        }
    }
    done.into_iter()
        .zip(silver)
        .map(|(run, def)| {
            run.unwrap_or_else(|| {
                (
                    chrono::Utc::now(),
                    Duration::ZERO,
                    Err(Error::Protocol(format!(
                        "silver.{}: the refresh ended unaccounted for",
                        def.name
                    ))),
                )
            })
        })
        .collect()
}

/// Run one cycle at watermark `w`. `forced` names (`gold.<n>`/`silver.<n>`)
/// were asked for with `medallion.refresh()`.
pub async fn cycle(
    cfg: &Config,
    client: &mut Client,
    w: Lsn,
    forced: &HashSet<String>,
) -> Result<CycleReport> {
    cycle_with(cfg, client, w, forced, &lake::TableCache::default()).await
}

/// [`cycle`] with Delta tables kept open from earlier cycles.
pub async fn cycle_with(
    cfg: &Config,
    client: &mut Client,
    w: Lsn,
    forced: &HashSet<String>,
    tables: &lake::TableCache,
) -> Result<CycleReport> {
    let lake = Lake::from_config(cfg)?;
    let cycle_clock = Instant::now();
    let (silver, gold) = catalog::refined_definitions(client).await?;
    let definitions_took = cycle_clock.elapsed();
    let mut slowest_silver: (Duration, &str) = (Duration::ZERO, "");
    let mut report = CycleReport {
        watermark: w,
        tables: Vec::new(),
    };
    let mut inputs: HashMap<String, Input> = HashMap::new();
    // Outcomes without a run (nothing new, waiting, blocked): one status
    // write for all of them at the end of the cycle.
    let mut quiet: Vec<TableOutcome> = Vec::new();
    let refreshed = refresh_silver(cfg, &lake, tables, &silver, w).await;
    for (def, (started, took, outcome)) in silver.iter().zip(refreshed) {
        let (mut out, expectations, run) = match outcome {
            Ok(r) if r.waiting.is_some() => (
                TableOutcome {
                    layer: Layer::Silver,
                    name: def.name.clone(),
                    state: ObjectState::Waiting,
                    watermark: None,
                    rows_in: 0,
                    rows_out: 0,
                    version: None,
                    error: r.waiting.clone(),
                },
                r.expectations,
                false,
            ),
            Ok(r) => {
                if r.toast_missing > 0 {
                    tracing::warn!(silver = %def.name, values = r.toast_missing,
                        "unchanged TOASTed values missing from bronze and silver were written as NULL; \
                         set REPLICA IDENTITY FULL on the source table and resync it");
                }
                (
                    TableOutcome {
                        layer: Layer::Silver,
                        name: def.name.clone(),
                        state: ObjectState::Ok,
                        watermark: Some(w),
                        rows_in: r.rows_in,
                        rows_out: r.rows_out,
                        version: r.version,
                        error: None,
                    },
                    r.expectations.clone(),
                    r.changed || r.rows_in > 0,
                )
            }
            Err(e) => {
                let message = table_error(e)?;
                tracing::error!(silver = %def.name, error = %message, "silver table stopped");
                (
                    TableOutcome::failed(Layer::Silver, &def.name, message),
                    Default::default(),
                    true,
                )
            }
        };
        if out.state == ObjectState::Ok
            && let Some(t) = tables
                .current(&lake, &lake.refined_url("silver", &def.name)?)
                .await?
        {
            inputs.insert(
                format!("silver.{}", def.name),
                Input {
                    table: t,
                    watermark: w,
                },
            );
        }
        tracing::debug!(silver = %def.name, state = %out.state, elapsed = ?took, "silver run");
        slowest_silver = slowest_silver.max((took, def.name.as_str()));
        if let Some(p) = &def.publish
            && out.state == ObjectState::Ok
            && let Some(input) = inputs.get(&format!("silver.{}", def.name))
            && (run
                || forced.contains(&format!("silver.{}", def.name))
                || !published_current(cfg, client, p, &input.table).await?)
        {
            let node = format!("silver.{}", def.name);
            // A current-state table's key is one row; an SCD2 table has a
            // row per version of a key.
            let keys = p.keys.as_deref().or_else(|| {
                matches!(def.history, crate::catalog::History::Current)
                    .then_some(def.keys.as_slice())
                    .filter(|k| !k.is_empty())
            });
            if let Err(e) = publish_one(cfg, client, &input.table, p, keys, None, &node, w).await {
                out = publish_failed(out, e)?;
            }
        }
        if run {
            let counts = expectations_json(&expectations);
            status::record(client, &cfg.slot, w, &out, started, counts, run).await?;
        } else {
            quiet.push(out.clone());
        }
        report.tables.push(out);
    }
    let silver_took = cycle_clock.elapsed();
    let gold = gold_models::refresh(
        cfg,
        client,
        &lake,
        tables,
        &gold,
        forced,
        w,
        &mut inputs,
        &mut quiet,
    )
    .await?;
    report.tables.extend(gold);
    let gold_took = cycle_clock.elapsed();
    let due = {
        let mut written = tables.quiet_status();
        let now = Instant::now();
        let was_quiet: HashSet<(Layer, &str)> =
            quiet.iter().map(|o| (o.layer, o.name.as_str())).collect();
        for o in &report.tables {
            if !was_quiet.contains(&(o.layer, o.name.as_str())) {
                written.ran(o, w, now);
            }
        }
        written.due(
            &quiet,
            w,
            |o| forced.contains(&format!("{}.{}", o.layer, o.name)),
            Duration::from_millis(cfg.status_interval_ms),
            now,
        )
    };
    if let Err(e) = status::record_quiet(client, &cfg.slot, w, &due).await {
        tables.quiet_status().forget(&due);
        return Err(e);
    }
    // The rows that follow the refiner are at `w` from here on: after every
    // row of this cycle is written, so none shows `w` before its object
    // reached it.
    let position_due = tables.quiet_status().position_due(
        Duration::from_millis(cfg.status_interval_ms),
        Instant::now(),
    );
    if position_due {
        let objects: Vec<String> = report
            .tables
            .iter()
            .map(|o| format!("{}.{}", o.layer, o.name))
            .collect();
        if let Err(e) = status::record_position(client, &cfg.slot, w, &objects).await {
            tables.quiet_status().forget_position();
            return Err(e);
        }
    }
    // The run history's retention: its own failure stops nothing (the
    // rows wait for the next hour), and is logged.
    let prune_due = tables.quiet_status().runs_prune_due(Instant::now());
    if prune_due {
        match status::prune_runs(client, &cfg.slot, cfg.runs_retention_days).await {
            Ok((0, _)) => {}
            Ok((n, more)) => {
                tracing::info!(
                    rows = n,
                    days = cfg.runs_retention_days,
                    more,
                    "deleted expired rows of medallion.runs"
                );
                if more {
                    tables.quiet_status().runs_prune_unfinished();
                }
            }
            Err(e) => tracing::warn!(error = %e, days = cfg.runs_retention_days,
                "deleting expired rows of medallion.runs failed; tried again in an hour"),
        }
    }
    // Where a cycle's time goes, one line a cycle (the per-table lines are
    // `medallion::refine`'s).
    tracing::debug!(target: "medallion::refine::cycle",
        watermark = %w,
        definitions = ?definitions_took,
        silver = ?silver_took.saturating_sub(definitions_took),
        slowest_silver = ?slowest_silver.0,
        slowest_silver_table = slowest_silver.1,
        gold = ?gold_took.saturating_sub(silver_took),
        status = ?cycle_clock.elapsed().saturating_sub(gold_took),
        status_rows = due.len(),
        "cycle phases");
    Ok(report)
}

/// Whether the target holds our publication of `table`'s current Delta
/// version (its comment names the version). Anything else is published
/// again: no table yet, someone else's table (which fails visibly again), or
/// an older version — a crash between the gold commit and the publish
/// commit leaves the previous contents, and the next cycle must not take
/// them for current. Read where the tables are published
/// (`publish_database_url`, else the catalog database).
async fn published_current(
    cfg: &Config,
    client: &Client,
    target: &crate::catalog::Publication,
    table: &deltalake::DeltaTable,
) -> Result<bool> {
    const COMMENT: &str = "SELECT pg_catalog.obj_description(c.oid, 'pg_class') FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2";
    let row = match &cfg.publish_database_url {
        Some(url) => {
            let (other, conn) = catalog::connect(url).await?;
            let task = tokio::spawn(conn);
            let r = other
                .query_opt(COMMENT, &[&target.schema, &target.table])
                .await;
            task.abort();
            r
        }
        None => {
            client
                .query_opt(COMMENT, &[&target.schema, &target.table])
                .await
        }
    }
    .map_err(Error::pg("check published table"))?;
    let comment: Option<String> = match row {
        Some(r) => r.field(0)?,
        None => None,
    };
    Ok(comment.is_some_and(|c| {
        c.starts_with("medallion: ")
            && crate::publish::version_in_comment(&c) == table.version()
            && crate::publish::table_in_comment(&c) == crate::publish::table_id(table).as_deref()
    }))
}

fn delta_version(table: &deltalake::DeltaTable) -> i64 {
    table.version().map(|v| v as i64).unwrap_or(-1)
}

#[allow(clippy::too_many_arguments)]
async fn publish_one(
    cfg: &Config,
    client: &mut Client,
    table: &deltalake::DeltaTable,
    target: &crate::catalog::Publication,
    keys: Option<&[String]>,
    handover: Option<&lake::difference::Handover>,
    node: &str,
    w: Lsn,
) -> Result<()> {
    match &cfg.publish_database_url {
        Some(url) => {
            let (mut other, conn) = catalog::connect(url).await?;
            let task = tokio::spawn(conn);
            let r = publish_to(&mut other, table, target, keys, handover, node, w).await;
            task.abort();
            r
        }
        None => publish_to(client, table, target, keys, handover, node, w).await,
    }
}

/// Publish `table` (the Delta table of `node`, at watermark `w`) through
/// `client`, a connection to the database it is published in; `handover`:
/// the difference the refresh that wrote it computed.
async fn publish_to(
    client: &mut Client,
    table: &deltalake::DeltaTable,
    target: &crate::catalog::Publication,
    keys: Option<&[String]>,
    handover: Option<&lake::difference::Handover>,
    node: &str,
    w: Lsn,
) -> Result<()> {
    // The table's identity, then its version: a publication by difference
    // starts from that version of that table (`lake::difference`).
    let comment = format!(
        "medallion: {node} at source LSN {w} (Delta table {}) (Delta version {})",
        crate::publish::table_id(table).unwrap_or_default(),
        delta_version(table)
    );
    let to = crate::publish::Target {
        schema: &target.schema,
        table: &target.table,
        keys,
        handover,
    };
    let published = crate::publish::publish(client, table, &to, &comment).await?;
    let target = target.target();
    match published {
        crate::publish::Published::Replaced { rows } => {
            tracing::info!(table = %node, target = %target, rows, "published to Postgres")
        }
        crate::publish::Published::Difference {
            deleted,
            inserted,
            handed_over,
        } => {
            tracing::info!(table = %node, target = %target, deleted, inserted, handed_over, "published to Postgres by difference")
        }
    }
    Ok(())
}

/// Refine continuously: a cycle whenever the slot's position advanced (at
/// most every `refine_interval`), at once when `acknowledged` (the bronze
/// writer of this process) announces a new position and
/// `refine_on_commit` is set, on `medallion.refresh()` and on definition
/// changes, until `shutdown`.
pub async fn run_loop(
    cfg: &Config,
    shutdown: CancellationToken,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    acknowledged: Option<crate::replicate::Acknowledged>,
) -> Result<()> {
    metrics.set_refiner_running(true);
    let acknowledged = acknowledged.filter(|_| cfg.refine_on_commit);
    let ended = refine_until_stopped(cfg, shutdown, &metrics, acknowledged.as_ref()).await;
    metrics.set_refiner_running(false);
    ended
}

/// [`run_loop`] while it runs.
async fn refine_until_stopped(
    cfg: &Config,
    shutdown: CancellationToken,
    metrics: &std::sync::Arc<crate::metrics::Metrics>,
    acknowledged: Option<&crate::replicate::Acknowledged>,
) -> Result<()> {
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        let res =
            match crate::lease::Lease::acquire(cfg, crate::lease::LeaseKind::Refine, &shutdown)
                .await
            {
                Ok(lease) => loop_once(cfg, shutdown.clone(), &lease, metrics, acknowledged).await,
                Err(Error::Interrupted) => return Ok(()),
                Err(e) => Err(e),
            };
        match res {
            Ok(()) => return Ok(()),
            Err(_) if shutdown.is_cancelled() => return Ok(()),
            // A cycle-level failure (objects fail alone inside a cycle): the
            // refiner keeps trying — logged now, never a silent stall — so a
            // fixed grant or a store that is back resumes it without a restart.
            // Only a wrong configuration or a lake that is not this
            // slot's is final; a denied grant or a broken definition is
            // fixed by an operator while bronze goes on.
            Err(e)
                if !matches!(
                    e,
                    Error::Config(_) | Error::LakeOwned { .. } | Error::LeaseHeld { .. }
                ) =>
            {
                // A failure after a long healthy stretch starts over.
                if started.elapsed() > Duration::from_secs(300) {
                    backoff = Duration::from_secs(1);
                }
                if e.retry_policy() == RetryPolicy::RetryOnTimer {
                    tracing::warn!(error = %e, retry_in = ?backoff, "refinement: transient error");
                } else {
                    tracing::error!(error = %e, retry_in = ?backoff,
                        "silver/gold refinement failed; retrying (bronze goes on)");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
            Err(e) => return Err(e),
        }
    }
}

async fn loop_once(
    cfg: &Config,
    shutdown: CancellationToken,
    lease: &crate::lease::Lease,
    metrics: &crate::metrics::Metrics,
    acknowledged: Option<&crate::replicate::Acknowledged>,
) -> Result<()> {
    use futures::StreamExt;
    let mut commits = acknowledged.map(|a| a.subscribe());
    let (mut client, mut conn) = catalog::connect(&cfg.database_url).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let conn_task = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    client
        .batch_execute("SET application_name = 'medallion-refine'; LISTEN medallion_refresh; LISTEN medallion_config")
        .await
        .map_err(Error::pg("LISTEN"))?;
    let interval = Duration::from_millis(cfg.refine_interval_ms.max(100));
    let (silver, _) = catalog::refined_definitions(&client).await?;
    let mut floor = refined_floor(cfg, &silver).await?;
    let mut last_w = None;
    let mut forced = HashSet::new();
    let mut config_changed = true;
    let mut last_cycle = Instant::now() - interval;
    let tables = lake::TableCache::default();
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = tokio::time::sleep(interval.saturating_sub(last_cycle.elapsed()).max(Duration::from_millis(50))) => {}
            // The bronze writer of this process committed and acknowledged:
            // refine now (announcements during a cycle coalesce into one).
            Ok(()) = async {
                match commits.as_mut() {
                    Some(rx) => rx.changed().await,
                    None => std::future::pending().await,
                }
            } => {}
            Some((channel, payload)) = rx.recv() => {
                if channel == "medallion_refresh" { forced.insert(payload); } else { config_changed = true; }
                continue;
            }
        }
        while let Ok((channel, payload)) = rx.try_recv() {
            if channel == "medallion_refresh" {
                forced.insert(payload);
            } else {
                config_changed = true;
            }
        }
        let woke = Instant::now();
        if let Err(e) = lease.check() {
            break Err(e);
        }
        // Audit records are sealed every tick, whether or not the lake moved.
        match crate::audit::seal(&client).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(sealed = n, "audit records sealed"),
            Err(e) => {
                tracing::warn!(error = %e, "audit sealing failed; records stay unsealed until it succeeds")
            }
        }
        let Some(w) = watermark(&client, &cfg.slot, floor).await? else {
            continue;
        };
        // What this process's writer acknowledged may not show in the slot
        // yet (the server applies feedback asynchronously); it is durable
        // in every bronze table all the same.
        let w = w.max(acknowledged.and_then(|a| a.get()).unwrap_or(w));
        let asked = !forced.is_empty() || config_changed;
        if !cycle_due(w, last_w, asked, last_cycle.elapsed(), interval) {
            continue;
        }
        last_cycle = Instant::now();
        match cycle_with(cfg, &mut client, w, &forced, &tables).await {
            Ok(r) => {
                tracing::debug!(target: "medallion::refine::cycle", watermark = %w, tables = r.tables.len(),
                    before_cycle = ?last_cycle.duration_since(woke), took = ?last_cycle.elapsed(), "refinement cycle");
                let failed = |layer: Layer| {
                    r.tables
                        .iter()
                        .filter(|t| t.layer == layer && t.state == ObjectState::Failed)
                        .count() as u64
                };
                metrics.refine_cycle(failed(Layer::Silver), failed(Layer::Gold));
                last_w = Some(w);
                floor = floor.max(Some(w));
                forced.clear();
                config_changed = false;
            }
            Err(e) => break Err(e),
        }
    };
    conn_task.abort();
    result
}

/// Where silver runs read and write.
pub struct Refiner<'a> {
    pub lake: &'a Lake,
    pub slot: &'a str,
    /// Changes applied per MERGE (bounds memory; one transaction is never split).
    pub batch_rows: usize,
    /// Scale of unconstrained `numeric` (`MEDALLION_NUMERIC_SCALE`): gold
    /// reads a bare `::numeric` with it, as silver stores such columns.
    pub numeric_scale: i8,
    /// Compact a table this refiner wrote once this many of its files are
    /// small (`MEDALLION_COMPACT_SMALL_FILES`; 0 never).
    pub compact_small_files: usize,
    /// Target size of a silver table's files (`MEDALLION_SILVER_FILE_MIB`).
    pub silver_file_bytes: u64,
    /// Apply current-state slices with deletion vectors
    /// (`MEDALLION_SILVER_DELETION_VECTORS`, see [`crate::silver`]).
    pub silver_deletion_vectors: bool,
    /// Apply keyed gold results with deletion vectors
    /// (`MEDALLION_GOLD_DELETION_VECTORS`, see [`crate::gold`]).
    pub gold_deletion_vectors: bool,
    /// Delta tables kept open between cycles.
    pub tables: &'a lake::TableCache,
}

impl Refiner<'_> {
    /// A refined table this refiner just wrote: compacted between its own
    /// commits into `compact`'s layout when given (every MERGE adds files),
    /// kept for the next cycle; the table and its version.
    pub(crate) async fn keep_written(
        &self,
        mut table: deltalake::DeltaTable,
        url: &url::Url,
        compact: Option<crate::optimize::Layout<'_>>,
    ) -> Result<(deltalake::DeltaTable, Option<i64>)> {
        if let Some(layout) = compact {
            crate::optimize::compact_refined(
                &mut table,
                url,
                self.lake,
                self.compact_small_files,
                layout,
            )
            .await?;
        }
        lake::after_commit(&table, url);
        self.tables.remember(url, &table);
        let version = table.version().map(|v| v as i64);
        Ok((table, version))
    }
}

impl<'a> Refiner<'a> {
    /// The refiner `cfg` describes, over its lake root and storage options.
    pub fn new(cfg: &'a crate::Config, lake: &'a Lake, tables: &'a lake::TableCache) -> Self {
        Refiner {
            lake,
            slot: &cfg.slot,
            batch_rows: cfg.silver_batch_rows.max(1),
            numeric_scale: cfg.numeric_scale,
            compact_small_files: cfg.compact_small_files,
            silver_file_bytes: cfg.silver_file_mib.max(1) << 20,
            silver_deletion_vectors: cfg.silver_deletion_vectors,
            gold_deletion_vectors: cfg.gold_deletion_vectors,
            tables,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(v: i64) -> Option<Lsn> {
        Some(Lsn::from_lake(v))
    }

    #[test]
    fn the_watermark_never_goes_below_a_refined_position_this_server_holds() {
        // No floor yet: the slot's position.
        assert_eq!(choose_watermark(at(100), at(150), None), at(100));
        // Postgres restarted and forgot an unpersisted confirmation: the
        // floor (confirmed before, durable in bronze) wins.
        assert_eq!(choose_watermark(at(100), at(150), at(120)), at(120));
        assert_eq!(choose_watermark(at(100), at(120), at(120)), at(120));
        // A floor beyond this server's WAL (restored from an older backup)
        // is not one it confirmed: ignored.
        assert_eq!(choose_watermark(at(100), at(110), at(120)), at(100));
        assert_eq!(choose_watermark(at(100), None, at(120)), at(100));
        // An older floor changes nothing; no slot position, no watermark.
        assert_eq!(choose_watermark(at(100), at(150), at(90)), at(100));
        assert_eq!(choose_watermark(None, at(150), at(90)), None);
    }

    #[test]
    fn a_cycle_runs_when_the_watermark_moved_when_asked_and_on_the_long_timer() {
        let (w, i) = (Lsn::from_lake(10), Duration::from_secs(5));
        let short = Duration::from_secs(1);
        assert!(cycle_due(w, None, false, short, i), "first cycle");
        assert!(cycle_due(w, at(9), false, short, i), "watermark moved");
        assert!(!cycle_due(w, Some(w), false, short, i), "nothing new");
        assert!(
            cycle_due(w, Some(w), true, short, i),
            "refresh or definition change"
        );
        assert!(
            cycle_due(w, Some(w), false, Duration::from_secs(60), i),
            "interval models come due with time"
        );
        assert!(!cycle_due(w, Some(w), false, Duration::from_secs(59), i));
    }

    #[test]
    fn only_transient_errors_stop_a_cycle_every_other_fails_its_table_alone() {
        let transient = Error::LeaseLost {
            slot: "medallion".into(),
        };
        assert_eq!(transient.retry_policy(), RetryPolicy::RetryOnTimer);
        assert!(
            table_error(transient).is_err(),
            "a transient error retries the cycle"
        );
        let definite = Error::Config("key column id is not in bronze".into());
        assert_ne!(definite.retry_policy(), RetryPolicy::RetryOnTimer);
        assert_eq!(
            table_error(definite).expect("the table fails alone"),
            "configuration: key column id is not in bronze"
        );
    }
}
