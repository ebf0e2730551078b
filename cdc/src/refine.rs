//! Refinement cycles: silver and gold brought to one watermark.
//!
//! ```text
//!  W = confirmed_flush_lsn of the slot   (every transaction with commit LSN < W
//!      │                                  is durable in bronze: acknowledged
//!      ▼                                  only after its bronze commit)
//!  silver tables ── each to exactly W (or waiting / failed)
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
use crate::gold::Input;
use crate::lake;
use crate::silver::{Refiner, RuleCount};

/// What one cycle did to one table.
#[derive(Debug, Clone)]
pub struct TableOutcome {
    pub layer: &'static str,
    pub name: String,
    /// `ok`, `waiting`, `blocked`, `failed` or `up to date`.
    pub state: String,
    pub watermark: Option<i64>,
    pub rows_in: u64,
    pub rows_out: u64,
    pub version: Option<i64>,
    pub error: Option<String>,
}

/// What a cycle did.
#[derive(Debug, Clone, Default)]
pub struct CycleReport {
    pub watermark: i64,
    pub tables: Vec<TableOutcome>,
}

impl TableOutcome {
    fn failed(layer: &'static str, name: &str, message: String) -> TableOutcome {
        TableOutcome {
            layer,
            name: name.to_string(),
            state: "failed".into(),
            watermark: None,
            rows_in: 0,
            rows_out: 0,
            version: None,
            error: Some(message),
        }
    }
}

impl CycleReport {
    /// Tables that failed this cycle.
    pub fn failures(&self) -> Vec<&TableOutcome> {
        self.tables.iter().filter(|t| t.state == "failed").collect()
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
pub async fn watermark(client: &Client, slot: &str, floor: Option<i64>) -> Result<Option<i64>> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text, pg_catalog.pg_current_wal_flush_lsn()::text \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(Error::pg("read slot position"))?;
    let Some(row) = row else { return Ok(None) };
    let lsn = |i: usize| {
        row.get::<_, Option<String>>(i)
            .and_then(|s| pg_walstream::parse_lsn(&s).ok())
            .map(|l| l as i64)
    };
    let (confirmed, flushed) = (lsn(0), lsn(1));
    Ok(match (confirmed, floor) {
        (Some(c), Some(f)) if f > c && flushed.is_some_and(|w| f <= w) => {
            tracing::debug!(slot_position = %pg_walstream::format_lsn(c as u64),
                refined = %pg_walstream::format_lsn(f as u64),
                "the slot reports an older position than silver reflects (Postgres restarted); refining from the newer");
            Some(f)
        }
        (Some(c), Some(f)) if f > c => {
            tracing::warn!(refined = %pg_walstream::format_lsn(f as u64),
                "silver reflects a position beyond this server's WAL (restored from a backup?): \
                 ignored; resync the sources to rebuild the lake from this server");
            Some(c)
        }
        (c, _) => c,
    })
}

/// The highest position a silver table of this slot's lake already reflects:
/// the floor [`watermark`] never goes below (read once when a refiner starts;
/// a running refiner raises it with every cycle).
pub async fn refined_floor(
    cfg: &Config,
    silver: &[crate::catalog::SilverDef],
) -> Result<Option<i64>> {
    let lake_url = cfg.lake_root()?;
    let storage = cfg.storage.to_map();
    let tables = lake::TableCache::default();
    let refiner = Refiner::new(cfg, &lake_url, &storage, &tables);
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

#[allow(clippy::too_many_arguments)]
async fn record(
    client: &Client,
    slot: &str,
    outcome: &TableOutcome,
    started: chrono::DateTime<chrono::Utc>,
    expectations: &std::collections::BTreeMap<String, RuleCount>,
    run: bool,
) -> Result<()> {
    let lsn = outcome
        .watermark
        .map(|w| pg_walstream::format_lsn(w as u64));
    client
        .execute(
            "INSERT INTO medallion.table_status AS s (slot_name, layer, name, state, last_lsn, delta_version, \
                rows_total, last_error, last_commit_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5::text::pg_lsn, $6, $7, $8, \
                CASE WHEN $4 = 'ok' THEN clock_timestamp() END, clock_timestamp()) \
             ON CONFLICT (slot_name, layer, name) DO UPDATE SET state = EXCLUDED.state, \
                last_lsn = COALESCE(EXCLUDED.last_lsn, s.last_lsn), \
                delta_version = COALESCE(EXCLUDED.delta_version, s.delta_version), \
                rows_total = CASE WHEN EXCLUDED.layer = 'gold' AND EXCLUDED.state = 'ok' THEN EXCLUDED.rows_total \
                                  ELSE s.rows_total + EXCLUDED.rows_total END, \
                last_error = EXCLUDED.last_error, \
                last_commit_at = COALESCE(EXCLUDED.last_commit_at, s.last_commit_at), \
                updated_at = EXCLUDED.updated_at",
            &[
                &slot,
                &outcome.layer,
                &outcome.name,
                &outcome.state,
                &lsn,
                &outcome.version,
                &(outcome.rows_out as i64),
                &outcome.error,
            ],
        )
        .await
        .map_err(Error::pg("write medallion.table_status"))?;
    if run {
        let expectations = if expectations.is_empty() {
            None
        } else {
            Some(serde_json::to_value(expectations).unwrap_or_default())
        };
        client
            .execute(
                "INSERT INTO medallion.runs (slot_name, layer, name, started_at, finished_at, rows_in, rows_out, \
                    expectations, watermark, status, error) \
                 VALUES ($1, $2, $3, $4, clock_timestamp(), $5, $6, $7, $8::text::pg_lsn, $9, $10)",
                &[
                    &slot,
                    &outcome.layer,
                    &outcome.name,
                    &started,
                    &(outcome.rows_in as i64),
                    &(outcome.rows_out as i64),
                    &expectations,
                    &lsn,
                    &if outcome.state == "failed" { "failed" } else { "ok" },
                    &outcome.error,
                ],
            )
            .await
            .map_err(Error::pg("write medallion.runs"))?;
    }
    Ok(())
}

/// The status of tables and models a cycle did not run (nothing new,
/// waiting, blocked), in one statement: their position and state move, their
/// row counts stay.
async fn record_quiet(client: &Client, slot: &str, outcomes: &[TableOutcome]) -> Result<()> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&TableOutcome) -> Option<String>| -> Vec<Option<String>> {
        outcomes.iter().map(f).collect()
    };
    let layers = column(|o| Some(o.layer.to_string()));
    let names = column(|o| Some(o.name.clone()));
    let states = column(|o| Some(o.state.clone()));
    let lsns = column(|o| o.watermark.map(|w| pg_walstream::format_lsn(w as u64)));
    let errors = column(|o| o.error.clone());
    let versions: Vec<Option<i64>> = outcomes.iter().map(|o| o.version).collect();
    client
        .execute(
            "INSERT INTO medallion.table_status AS s (slot_name, layer, name, state, last_lsn, delta_version, \
                rows_total, last_error, last_commit_at, updated_at) \
             SELECT $1, u.layer, u.name, u.state, u.lsn::pg_lsn, u.version, 0, u.error, \
                CASE WHEN u.state = 'ok' THEN clock_timestamp() END, clock_timestamp() \
             FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::text[]) \
                AS u(layer, name, state, lsn, version, error) \
             ON CONFLICT (slot_name, layer, name) DO UPDATE SET state = EXCLUDED.state, \
                last_lsn = COALESCE(EXCLUDED.last_lsn, s.last_lsn), \
                delta_version = COALESCE(EXCLUDED.delta_version, s.delta_version), \
                last_error = EXCLUDED.last_error, \
                last_commit_at = COALESCE(EXCLUDED.last_commit_at, s.last_commit_at), \
                updated_at = EXCLUDED.updated_at",
            &[&slot, &layers, &names, &states, &lsns, &versions, &errors],
        )
        .await
        .map_err(Error::pg("write medallion.table_status"))?;
    Ok(())
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
    tracing::error!(layer = out.layer, name = %out.name, error = %message, "publication stopped");
    Ok(TableOutcome::failed(
        out.layer,
        &out.name,
        format!("publish: {message}"),
    ))
}

/// Run one cycle at watermark `w`. `forced` names (`gold.<n>`/`silver.<n>`)
/// were asked for with `medallion.refresh()`.
pub async fn cycle(
    cfg: &Config,
    client: &mut Client,
    w: i64,
    forced: &HashSet<String>,
) -> Result<CycleReport> {
    cycle_with(cfg, client, w, forced, &lake::TableCache::default()).await
}

/// [`cycle`] with Delta tables kept open from earlier cycles.
pub async fn cycle_with(
    cfg: &Config,
    client: &mut Client,
    w: i64,
    forced: &HashSet<String>,
    tables: &lake::TableCache,
) -> Result<CycleReport> {
    let lake_url = cfg.lake_root()?;
    let storage = cfg.storage.to_map();
    let refiner = Refiner::new(cfg, &lake_url, &storage, tables);
    let (silver, gold) = catalog::refined_definitions(client).await?;
    let mut report = CycleReport {
        watermark: w,
        tables: Vec::new(),
    };
    let mut inputs: HashMap<String, Input> = HashMap::new();
    // Outcomes without a run (nothing new, waiting, blocked): one status
    // write for all of them at the end of the cycle.
    let mut quiet: Vec<TableOutcome> = Vec::new();
    for def in &silver {
        let started = chrono::Utc::now();
        let clock = Instant::now();
        let outcome = refiner.refresh(def, w).await;
        let (mut out, expectations, run) = match outcome {
            Ok(r) if r.waiting.is_some() => (
                TableOutcome {
                    layer: "silver",
                    name: def.name.clone(),
                    state: "waiting".into(),
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
                        layer: "silver",
                        name: def.name.clone(),
                        state: "ok".into(),
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
                    TableOutcome::failed("silver", &def.name, message),
                    Default::default(),
                    true,
                )
            }
        };
        if out.state == "ok"
            && let Some(t) = tables
                .current(
                    &lake::refined_url(&lake_url, "silver", &def.name)?,
                    &storage,
                )
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
        tracing::debug!(silver = %def.name, state = %out.state, elapsed = ?clock.elapsed(), "silver run");
        if let Some(p) = &def.publish
            && out.state == "ok"
            && let Some(input) = inputs.get(&format!("silver.{}", def.name))
            && (run
                || forced.contains(&format!("silver.{}", def.name))
                || !published_current(cfg, client, p, &input.table).await?)
        {
            let node = format!("silver.{}", def.name);
            if let Err(e) = publish_one(cfg, client, &input.table, p, &node, w).await {
                out = publish_failed(out, e)?;
            }
        }
        if run {
            record(client, &cfg.slot, &out, started, &expectations, run).await?;
        } else {
            quiet.push(out.clone());
        }
        report.tables.push(out);
    }
    for def in &gold {
        let started = chrono::Utc::now();
        let node = format!("gold.{}", def.name);
        let missing: Vec<&String> = def
            .upstream
            .iter()
            .filter(|u| !inputs.contains_key(*u))
            .collect();
        let out = if !missing.is_empty() {
            // Read the last refresh's inputs if they exist but are behind:
            // a model never mixes watermarks.
            let reason = format!(
                "waiting for {}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let out = TableOutcome {
                layer: "gold",
                name: def.name.clone(),
                state: "blocked".into(),
                watermark: None,
                rows_in: 0,
                rows_out: 0,
                version: None,
                error: Some(reason),
            };
            quiet.push(out.clone());
            report.tables.push(out);
            continue;
        } else {
            refiner
                .refresh_gold(def, &inputs, forced.contains(&node))
                .await
        };
        let (mut out, expectations, run) = match out {
            Ok(r) => (
                TableOutcome {
                    layer: "gold",
                    name: def.name.clone(),
                    state: if r.skipped.is_some() {
                        "up to date".into()
                    } else {
                        "ok".into()
                    },
                    watermark: Some(r.watermark),
                    rows_in: 0,
                    rows_out: r.rows_out,
                    version: r.version,
                    error: None,
                },
                r.expectations,
                r.skipped.is_none(),
            ),
            Err(e) => {
                let message = table_error(e)?;
                tracing::error!(gold = %def.name, error = %message, "gold model stopped");
                (
                    TableOutcome::failed("gold", &def.name, message),
                    Default::default(),
                    true,
                )
            }
        };
        if out.state != "failed"
            && let Some(t) = tables
                .current(&lake::refined_url(&lake_url, "gold", &def.name)?, &storage)
                .await?
        {
            let wm = out.watermark.unwrap_or(w);
            if let Some(p) = &def.publish
                && (run || forced.contains(&node) || !published_current(cfg, client, p, &t).await?)
                && let Err(e) = publish_one(cfg, client, &t, p, &node, wm).await
            {
                out = publish_failed(out, e)?;
            }
            inputs.insert(
                node.clone(),
                Input {
                    table: t,
                    watermark: wm,
                },
            );
        }
        if out.state == "up to date" {
            out.state = "ok".into();
        }
        if run {
            record(client, &cfg.slot, &out, started, &expectations, run).await?;
        } else {
            quiet.push(out.clone());
        }
        report.tables.push(out);
    }
    record_quiet(client, &cfg.slot, &quiet).await?;
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
    target: &(String, String),
    table: &deltalake::DeltaTable,
) -> Result<bool> {
    const COMMENT: &str = "SELECT pg_catalog.obj_description(c.oid, 'pg_class') FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2";
    let row = match &cfg.publish_database_url {
        Some(url) => {
            let (other, conn) = catalog::connect(url).await?;
            let task = tokio::spawn(conn);
            let r = other.query_opt(COMMENT, &[&target.0, &target.1]).await;
            task.abort();
            r
        }
        None => client.query_opt(COMMENT, &[&target.0, &target.1]).await,
    }
    .map_err(Error::pg("check published table"))?;
    let comment: Option<String> = match row {
        Some(r) => r.field(0)?,
        None => None,
    };
    Ok(comment.is_some_and(|c| {
        c.starts_with("medallion: ")
            && c.ends_with(&format!("(Delta version {})", delta_version(table)))
    }))
}

fn delta_version(table: &deltalake::DeltaTable) -> i64 {
    table.version().map(|v| v as i64).unwrap_or(-1)
}

async fn publish_one(
    cfg: &Config,
    client: &mut Client,
    table: &deltalake::DeltaTable,
    target: &(String, String),
    node: &str,
    w: i64,
) -> Result<()> {
    let comment = format!(
        "medallion: {node} at source LSN {} (Delta version {})",
        pg_walstream::format_lsn(w as u64),
        delta_version(table)
    );
    let rows = match &cfg.publish_database_url {
        Some(url) => {
            let (mut other, conn) = catalog::connect(url).await?;
            let task = tokio::spawn(conn);
            let r =
                crate::publish::publish(&mut other, table, &target.0, &target.1, &comment).await;
            task.abort();
            r?
        }
        None => crate::publish::publish(client, table, &target.0, &target.1, &comment).await?,
    };
    tracing::info!(table = %node, target = %format!("{}.{}", target.0, target.1), rows, "published to Postgres");
    Ok(())
}

/// Refine continuously: a cycle whenever the slot's position advanced (at
/// most every `refine_interval`), on `medallion.refresh()` and on
/// definition changes, until `shutdown`.
pub async fn run_loop(
    cfg: &Config,
    shutdown: CancellationToken,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> Result<()> {
    metrics.set_refiner_running(true);
    let ended = refine_until_stopped(cfg, shutdown, &metrics).await;
    metrics.set_refiner_running(false);
    ended
}

/// [`run_loop`] while it runs.
async fn refine_until_stopped(
    cfg: &Config,
    shutdown: CancellationToken,
    metrics: &std::sync::Arc<crate::metrics::Metrics>,
) -> Result<()> {
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        let res =
            match crate::lease::Lease::acquire(cfg, crate::lease::LeaseKind::Refine, &shutdown)
                .await
            {
                Ok(lease) => loop_once(cfg, shutdown.clone(), &lease, metrics).await,
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
) -> Result<()> {
    use futures::StreamExt;
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
        if last_w == Some(w)
            && forced.is_empty()
            && !config_changed
            && last_cycle.elapsed() < interval * 12
        {
            continue;
        }
        last_cycle = Instant::now();
        match cycle_with(cfg, &mut client, w, &forced, &tables).await {
            Ok(r) => {
                tracing::debug!(watermark = %pg_walstream::format_lsn(w as u64), tables = r.tables.len(), "refinement cycle");
                let failed = |layer: &str| {
                    r.tables
                        .iter()
                        .filter(|t| t.layer == layer && t.state == "failed")
                        .count() as u64
                };
                metrics.refine_cycle(failed("silver"), failed("gold"));
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
