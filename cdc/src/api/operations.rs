//! What a client can ask of the lakehouse, whatever the transport: the HTTP
//! handlers ([`super::http`]) and the MCP tools ([`super::mcp`]) both call
//! these. Reads of the control plane go to Postgres (the extension's
//! status, runs and lineage); refresh and resync call the extension's own
//! functions, so its permission checks, NOTIFY and audit stay in Postgres;
//! reads of data go to the lake ([`super::query`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Serialize;
use tokio_postgres::Client;
use utoipa::ToSchema;

use super::query::{QueryResult, QueryRunner};
use crate::Config;
use crate::catalog::{self, Field, GoldDef, Refresh};
use crate::error::{Error, Refusal, Result};
use crate::lake::Lake;
use crate::metrics::Metrics;
use crate::status::ObjectState;

/// `expr` (a timestamptz) as text: UTC, ISO 8601 (`2026-12-04T06:24:40.123456Z`).
fn iso(expr: &str) -> String {
    format!("pg_catalog.to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
}

/// Pipeline health with the state of every object of this sidecar's slot.
#[derive(Debug, Serialize, ToSchema, JsonSchema)]
pub struct StatusReport {
    /// False when an object failed or the slot is missing or lost.
    pub healthy: bool,
    /// One line, as `medallion status` prints it.
    pub summary: String,
    pub slot: Option<SlotReport>,
    /// Failed objects as `layer.name`.
    pub failed: Vec<String>,
    /// Seconds since silver or gold last finished a table; null before the first cycle.
    pub refined_seconds_ago: Option<f64>,
    pub objects: Vec<ObjectStatus>,
}

/// The replication slot as Postgres reports it.
#[derive(Debug, Serialize, ToSchema, JsonSchema)]
pub struct SlotReport {
    pub name: String,
    /// A sidecar holds the slot and streams from it.
    pub active: bool,
    /// `reserved`, `extended`, `unreserved` or `lost` (Postgres's `wal_status`).
    pub wal_status: String,
    /// WAL bytes not yet acknowledged by the sidecar.
    pub lag_bytes: i64,
}

/// One bronze table, silver table or gold model.
#[derive(Debug, Serialize, ToSchema, JsonSchema)]
pub struct ObjectStatus {
    /// `bronze`, `silver` or `gold`.
    pub layer: String,
    pub name: String,
    /// e.g. `streaming`, `snapshotting`, `ok`, `up to date`, `blocked`, `failed`.
    pub state: String,
    pub last_lsn: Option<String>,
    pub last_commit_at: Option<String>,
    pub delta_version: Option<i64>,
    pub rows_total: i64,
    pub lag_bytes: Option<i64>,
    pub lag_seconds: Option<f64>,
    pub last_error: Option<String>,
    pub updated_at: String,
}

/// One silver or gold run that did something.
#[derive(Debug, Serialize, ToSchema, JsonSchema)]
pub struct Run {
    pub id: i64,
    pub layer: String,
    pub name: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub rows_in: Option<i64>,
    pub rows_out: Option<i64>,
    /// Per expectation: `{"rule": {"on_violation": "drop", "failed": 3}}`.
    #[schema(value_type = Option<Object>)]
    pub expectations: Option<serde_json::Value>,
    /// Source LSN the run's inputs were read at.
    pub watermark: Option<String>,
    /// `running`, `ok` or `failed`.
    pub status: String,
    pub error: Option<String>,
}

/// An edge of the lineage graph: `upstream` feeds `downstream`.
#[derive(Debug, Serialize, ToSchema, JsonSchema)]
pub struct LineageEdge {
    pub upstream_layer: String,
    pub upstream_name: String,
    pub downstream_layer: String,
    pub downstream_name: String,
}

/// The lineage graph: edges, and the same graph as a mermaid flowchart.
#[derive(Debug, Serialize, ToSchema, JsonSchema)]
pub struct Lineage {
    pub edges: Vec<LineageEdge>,
    pub mermaid: String,
}

/// A gold model in a listing.
#[derive(Debug, Serialize, ToSchema, JsonSchema)]
pub struct ModelSummary {
    pub name: String,
    /// `on_change`, `manual` or `every <interval>`.
    pub refresh: String,
    /// Null before its first refresh.
    pub state: Option<String>,
    pub last_refreshed_at: Option<String>,
    pub rows_total: Option<i64>,
    /// `schema.table` in Postgres when published.
    pub published_as: Option<String>,
}

/// A column of a silver table or gold model as stored in the lake.
#[derive(Debug, Clone, Serialize, ToSchema, JsonSchema)]
pub struct Column {
    pub name: String,
    /// Arrow data type, e.g. `Int64`, `Utf8`, `Decimal128(38, 24)`, `Date32`.
    pub data_type: String,
    pub nullable: bool,
}

/// An expectation of a model.
#[derive(Debug, Serialize, ToSchema, JsonSchema)]
pub struct ExpectationInfo {
    pub name: String,
    pub predicate: String,
    /// `warn`, `drop` or `fail`.
    pub on_violation: String,
}

/// A gold model: definition, columns and freshness.
#[derive(Debug, Serialize, ToSchema, JsonSchema)]
pub struct ModelDetail {
    pub name: String,
    /// The model's SQL (PostgreSQL syntax).
    pub query: String,
    pub refresh: String,
    pub keys: Option<Vec<String>>,
    /// Tables it reads: `silver.<name>` / `gold.<name>`.
    pub inputs: Vec<String>,
    pub expectations: Vec<ExpectationInfo>,
    pub published_as: Option<String>,
    /// Empty before the first refresh.
    pub columns: Vec<Column>,
    pub state: Option<String>,
    pub last_refreshed_at: Option<String>,
    pub delta_version: Option<i64>,
    /// Source LSN its inputs were read at in the last refresh.
    pub watermark_lsn: Option<String>,
    pub rows_total: Option<i64>,
    pub last_error: Option<String>,
}

/// What a refresh request did.
#[derive(Debug, Serialize, ToSchema, JsonSchema)]
pub struct RefreshOutcome {
    pub model: String,
    /// When Postgres received the request.
    pub requested_at: String,
    /// The WAL position at the request: a fresh model holds everything
    /// committed before it.
    pub covers_lsn: String,
    /// The model was recomputed over everything committed before the
    /// request (only when waiting).
    pub fresh: bool,
    pub state: Option<String>,
    pub last_refreshed_at: Option<String>,
    /// The source position the model was last computed at.
    pub watermark_lsn: Option<String>,
    pub last_error: Option<String>,
}

/// What a resync request did.
#[derive(Debug, Serialize, ToSchema, JsonSchema)]
pub struct ResyncOutcome {
    /// `schema.table`.
    pub table: String,
    /// The sidecar copies the table again from a fresh snapshot.
    pub requested: bool,
}

/// Rows read from the lake.
#[derive(Debug, Serialize, ToSchema, JsonSchema)]
pub struct Rows {
    pub columns: Vec<Column>,
    /// One JSON object per row, keyed by column name.
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<serde_json::Value>,
    pub row_count: usize,
    /// More rows matched than were returned.
    pub truncated: bool,
}

/// One shared Postgres session, opened again when it was lost.
struct Database {
    url: String,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
}

impl Database {
    async fn client(&self) -> Result<Arc<Client>> {
        let mut held = self.client.lock().await;
        if let Some(c) = held.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let (client, _task) = catalog::session(&self.url, "api").await.map_err(|e| {
            tracing::warn!(error = %e, "API: cannot reach Postgres");
            Error::refused(
                Refusal::Unavailable,
                "Postgres cannot be reached now; retry later",
            )
        })?;
        let client = Arc::new(client);
        *held = Some(client.clone());
        Ok(client)
    }
}

/// The lakehouse as clients operate it.
pub struct Operations {
    slot: String,
    db: Database,
    /// The silver and gold definitions, read at most once per
    /// [`DEFINITIONS_TTL`]: every data request needs them, and 50 clients
    /// reading four catalog tables each would queue on the session.
    definitions: std::sync::Mutex<Option<(Instant, Arc<Definitions>)>>,
    /// A request is reading the definitions again.
    reading_definitions: std::sync::atomic::AtomicBool,
    runner: QueryRunner,
    metrics: Option<Arc<Metrics>>,
    refine_interval: Duration,
}

type Definitions = (Vec<catalog::SilverDef>, Vec<GoldDef>);

/// How long definitions read from the catalog are reused.
const DEFINITIONS_TTL: Duration = Duration::from_secs(1);

/// Names of silver tables, gold models and expectations (the extension's
/// grammar): checked before anything reaches Postgres or the lake.
pub(crate) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn check_name(what: &str, name: &str) -> Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Error::refused(
            Refusal::Invalid,
            format!("{what} name {name:?}: names match [a-z_][a-z0-9_]{{0,62}}"),
        ))
    }
}

/// A Postgres error as a client may see it: the SQLSTATE and a fixed text,
/// never the server's message (the full error goes to the log).
fn from_postgres(what: &str, e: Error) -> Error {
    let Error::Postgres { source, .. } = &e else {
        return e;
    };
    if source.is_closed() || source.code().is_none() {
        tracing::warn!(error = %e, "API: {what}");
        return Error::refused(
            Refusal::Unavailable,
            "Postgres cannot be reached now; retry later",
        );
    }
    let code = source.code().map(|c| c.code()).unwrap_or_default();
    let (refusal, text) = match code {
        "42704" | "42P01" => (Refusal::NotFound, "no such object"),
        "42501" => (
            Refusal::Forbidden,
            "the sidecar's database role may not do this (grant it medallion_admin)",
        ),
        "22023" | "42601" | "22P02" | "3F000" | "42602" => {
            (Refusal::Invalid, "invalid name or argument")
        }
        "55000" => (
            Refusal::Invalid,
            "the object is not in a state that allows this",
        ),
        _ => {
            tracing::error!(error = %e, "API: {what}");
            return Error::refused(
                Refusal::Unavailable,
                format!("{what} failed in Postgres (SQLSTATE {code}); see the sidecar log"),
            );
        }
    };
    tracing::info!(error = %e, "API: {what} refused");
    Error::refused(refusal, format!("{what}: {text} (SQLSTATE {code})"))
}

fn refresh_text(r: Refresh) -> String {
    match r {
        Refresh::OnChange => "on_change".into(),
        Refresh::Manual => "manual".into(),
        Refresh::Interval(d) => format!("every {} s", d.as_secs()),
    }
}

/// What `medallion.table_status` holds for a gold model; all `None` before
/// its first refresh.
#[derive(Debug, Clone, Default)]
struct ModelState {
    state: Option<String>,
    last_refreshed_at: Option<String>,
    delta_version: Option<i64>,
    watermark_lsn: Option<String>,
    rows_total: Option<i64>,
    last_error: Option<String>,
}

impl Operations {
    pub fn new(cfg: &Config, lake: Lake, metrics: Option<Arc<Metrics>>) -> Operations {
        Operations {
            slot: cfg.slot.clone(),
            db: Database {
                url: cfg.database_url.clone(),
                client: tokio::sync::Mutex::new(None),
            },
            definitions: std::sync::Mutex::new(None),
            reading_definitions: std::sync::atomic::AtomicBool::new(false),
            runner: QueryRunner::new(cfg, lake),
            metrics,
            refine_interval: Duration::from_millis(cfg.refine_interval_ms),
        }
    }

    pub(crate) fn runner(&self) -> &QueryRunner {
        &self.runner
    }

    /// Why this sidecar cannot serve its purpose now: `[]` when ready.
    /// Each reason is a stable word (`database_unreachable`, `slot_missing`,
    /// `slot_lost`, `slot_inactive`, `not_streaming`, `snapshotting`,
    /// `refiner_stopped`, `refiner_stalled`, `failed_objects`).
    pub async fn readiness(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if let Some(m) = &self.metrics {
            if !m.streaming() {
                reasons.push("not_streaming");
            }
            if self.refine_interval > Duration::ZERO {
                if !m.refiner_running() {
                    reasons.push("refiner_stopped");
                } else {
                    // A cycle every interval at most, when something moved;
                    // ten intervals plus a minute without any is a stall.
                    let last = m.last_refine_unix();
                    let now = chrono::Utc::now().timestamp();
                    let allowed = (self.refine_interval * 10).as_secs() as i64 + 60;
                    if last > 0 && now - last > allowed {
                        reasons.push("refiner_stalled");
                    }
                }
            }
        }
        match self.status().await {
            Err(_) => reasons.push("database_unreachable"),
            Ok(s) => {
                match &s.slot {
                    None => reasons.push("slot_missing"),
                    Some(slot) if slot.wal_status == "lost" => reasons.push("slot_lost"),
                    Some(slot) if !slot.active => reasons.push("slot_inactive"),
                    Some(_) => {}
                }
                if s.objects
                    .iter()
                    .any(|o| o.state == ObjectState::Snapshotting.as_str())
                {
                    reasons.push("snapshotting");
                }
                if !s.failed.is_empty() {
                    reasons.push("failed_objects");
                }
            }
        }
        reasons
    }

    /// The pipeline's health and every object's state.
    pub async fn status(&self) -> Result<StatusReport> {
        let client = self.db.client().await?;
        let sql = format!(
            "SELECT layer, name, state, last_lsn::text, {}, delta_version, rows_total, lag_bytes, \
                    lag_seconds, last_error, {} \
             FROM medallion.status() WHERE slot_name = $1 ORDER BY layer, name",
            iso("last_commit_at"),
            iso("updated_at")
        );
        let rows = client
            .query(&sql, &[&self.slot])
            .await
            .map_err(Error::pg("read medallion.status()"))
            .map_err(|e| from_postgres("read the status", e))?;
        let mut objects = Vec::with_capacity(rows.len());
        for r in &rows {
            objects.push(ObjectStatus {
                layer: r.field(0)?,
                name: r.field(1)?,
                state: r.field(2)?,
                last_lsn: r.field(3)?,
                last_commit_at: r.field(4)?,
                delta_version: r.field(5)?,
                rows_total: r.field(6)?,
                lag_bytes: r.field(7)?,
                lag_seconds: r.field(8)?,
                last_error: r.field(9)?,
                updated_at: r.field(10)?,
            });
        }
        let health = crate::status::health(
            &client,
            &self.slot,
            objects
                .iter()
                .map(|o| (o.layer.clone(), o.name.clone(), o.state.clone())),
        )
        .await
        .map_err(|e| from_postgres("read the slot", e))?;
        Ok(StatusReport {
            healthy: !health.degraded(),
            summary: health.to_string(),
            slot: health.slot.as_ref().map(|s| SlotReport {
                name: self.slot.clone(),
                active: s.active,
                wal_status: s.wal_status.clone(),
                lag_bytes: s.lag_bytes,
            }),
            failed: health.failed(),
            refined_seconds_ago: health.refined_ago_s,
            objects,
        })
    }

    /// The latest runs, newest first, optionally of one layer or object.
    pub async fn runs(
        &self,
        layer: Option<&str>,
        name: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Run>> {
        if let Some(l) = layer
            && !matches!(l, "silver" | "gold")
        {
            return Err(Error::refused(
                Refusal::Invalid,
                format!("layer {l:?}: use silver or gold"),
            ));
        }
        if let Some(n) = name {
            check_name("object", n)?;
        }
        let limit = limit.clamp(1, 1000) as i64;
        let client = self.db.client().await?;
        let sql = format!(
            "SELECT id, layer, name, {}, {}, rows_in, rows_out, expectations, watermark::text, status, error \
             FROM medallion.runs \
             WHERE slot_name = $1 AND ($2::text IS NULL OR layer = $2) AND ($3::text IS NULL OR name = $3) \
             ORDER BY id DESC LIMIT $4",
            iso("started_at"),
            iso("finished_at")
        );
        let rows = client
            .query(&sql, &[&self.slot, &layer, &name, &limit])
            .await
            .map_err(Error::pg("read medallion.runs"))
            .map_err(|e| from_postgres("read the runs", e))?;
        rows.iter()
            .map(|r| {
                Ok(Run {
                    id: r.field(0)?,
                    layer: r.field(1)?,
                    name: r.field(2)?,
                    started_at: r.field(3)?,
                    finished_at: r.field(4)?,
                    rows_in: r.field(5)?,
                    rows_out: r.field(6)?,
                    expectations: r.field(7)?,
                    watermark: r.field(8)?,
                    status: r.field(9)?,
                    error: r.field(10)?,
                })
            })
            .collect()
    }

    /// Which table feeds which, as edges and as a mermaid flowchart.
    pub async fn lineage(&self) -> Result<Lineage> {
        let client = self.db.client().await?;
        let rows = client
            .query(
                "SELECT upstream_layer, upstream_name, downstream_layer, downstream_name \
                 FROM medallion.lineage ORDER BY 1, 2, 3, 4",
                &[],
            )
            .await
            .map_err(Error::pg("read medallion.lineage"))
            .map_err(|e| from_postgres("read the lineage", e))?;
        let edges = rows
            .iter()
            .map(|r| {
                Ok(LineageEdge {
                    upstream_layer: r.field(0)?,
                    upstream_name: r.field(1)?,
                    downstream_layer: r.field(2)?,
                    downstream_name: r.field(3)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mermaid: String = client
            .query_one("SELECT medallion.lineage_mermaid()", &[])
            .await
            .map_err(Error::pg("medallion.lineage_mermaid()"))
            .map_err(|e| from_postgres("draw the lineage", e))?
            .field(0)?;
        Ok(Lineage { edges, mermaid })
    }

    async fn definitions(&self) -> Result<Arc<Definitions>> {
        use std::sync::atomic::Ordering;
        let stale = {
            let cached = self.definitions.lock().unwrap_or_else(|p| p.into_inner());
            match cached.as_ref() {
                Some((read, defs)) if read.elapsed() < DEFINITIONS_TTL => return Ok(defs.clone()),
                other => other.map(|(_, defs)| defs.clone()),
            }
        };
        // One request reads them again; the others meanwhile use the
        // copy of a second ago instead of queueing behind it.
        if let Some(stale) = &stale
            && self.reading_definitions.swap(true, Ordering::AcqRel)
        {
            return Ok(stale.clone());
        }
        let read = async {
            let client = self.db.client().await?;
            catalog::refined_definitions(&client)
                .await
                .map_err(|e| from_postgres("read the definitions", e))
        }
        .await;
        if stale.is_some() {
            self.reading_definitions.store(false, Ordering::Release);
        }
        let defs = Arc::new(read?);
        *self.definitions.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), defs.clone()));
        Ok(defs)
    }

    async fn model_states(&self, name: Option<&str>) -> Result<Vec<(String, ModelState)>> {
        let client = self.db.client().await?;
        let sql = format!(
            "SELECT name, state, {}, delta_version, last_lsn::text, rows_total, last_error \
             FROM {} \
             WHERE slot_name = $1 AND layer = 'gold' AND ($2::text IS NULL OR name = $2)",
            iso("updated_at"),
            crate::status::SHOWN_STATUS
        );
        let rows = client
            .query(&sql, &[&self.slot, &name])
            .await
            .map_err(Error::pg("read medallion.table_status"))
            .map_err(|e| from_postgres("read the model states", e))?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.field(0)?,
                    ModelState {
                        state: Some(r.field(1)?),
                        last_refreshed_at: Some(r.field(2)?),
                        delta_version: r.field(3)?,
                        watermark_lsn: r.field(4)?,
                        rows_total: Some(r.field(5)?),
                        last_error: r.field(6)?,
                    },
                ))
            })
            .collect()
    }

    /// Every gold model with its freshness.
    pub async fn models(&self) -> Result<Vec<ModelSummary>> {
        let defs = self.definitions().await?;
        let states: std::collections::HashMap<String, ModelState> =
            self.model_states(None).await?.into_iter().collect();
        let mut out: Vec<ModelSummary> = defs
            .1
            .iter()
            .map(|g| {
                let s = states.get(&g.name).cloned().unwrap_or_default();
                ModelSummary {
                    refresh: refresh_text(g.refresh),
                    state: s.state,
                    last_refreshed_at: s.last_refreshed_at,
                    rows_total: s.rows_total,
                    published_as: g.publish.as_ref().map(|p| p.target()),
                    name: g.name.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn gold_def(&self, name: &str) -> Result<GoldDef> {
        check_name("model", name)?;
        let defs = self.definitions().await?;
        defs.1
            .iter()
            .find(|g| g.name == name)
            .cloned()
            .ok_or_else(|| {
                Error::refused(
                    Refusal::NotFound,
                    format!("no gold model named {name:?}; GET /v1/models lists them"),
                )
            })
    }

    /// One gold model: definition, columns, freshness.
    pub async fn model(&self, name: &str) -> Result<ModelDetail> {
        let def = self.gold_def(name).await?;
        let state = self
            .model_states(Some(name))
            .await?
            .into_iter()
            .next()
            .map(|(_, s)| s)
            .unwrap_or_default();
        let columns = match self.runner.schema("gold", name).await? {
            Some(schema) => super::query::columns(&schema),
            None => Vec::new(),
        };
        Ok(ModelDetail {
            name: def.name,
            query: def.query,
            refresh: refresh_text(def.refresh),
            keys: def.keys,
            inputs: def.upstream,
            expectations: def
                .expectations
                .into_iter()
                .map(|e| ExpectationInfo {
                    name: e.name,
                    predicate: e.predicate,
                    on_violation: e.on_violation.as_str().into(),
                })
                .collect(),
            published_as: def.publish.map(|p| p.target()),
            columns,
            state: state.state,
            last_refreshed_at: state.last_refreshed_at,
            delta_version: state.delta_version,
            watermark_lsn: state.watermark_lsn,
            rows_total: state.rows_total,
            last_error: state.last_error,
        })
    }

    /// Ask the refiner to recompute gold model `name` now, through
    /// `medallion.refresh`. With `wait`, wait until the model was
    /// recomputed over everything committed before the request (its
    /// watermark at or past the WAL position of the request — an import
    /// that finished before is in it) or the wait is over.
    pub async fn refresh(&self, name: &str, wait: Option<Duration>) -> Result<RefreshOutcome> {
        check_name("model", name)?;
        // Only gold models: a silver table is refreshed by its source.
        self.gold_def(name).await?;
        let client = self.db.client().await?;
        let request = format!(
            "SELECT {}, pg_catalog.clock_timestamp(), pg_catalog.pg_current_wal_lsn()::text              FROM (SELECT medallion.refresh($1)) r",
            iso("pg_catalog.clock_timestamp()")
        );
        let ask =
            async |client: &Client| -> Result<(String, chrono::DateTime<chrono::Utc>, String)> {
                let row = client
                    .query_one(&request, &[&name])
                    .await
                    .map_err(Error::pg("medallion.refresh"))
                    .map_err(|e| from_postgres("refresh", e))?;
                Ok((row.field(0)?, row.field(1)?, row.field(2)?))
            };
        let (requested_at, mut asked, covers) = ask(&client).await?;
        let mut outcome = RefreshOutcome {
            model: name.into(),
            requested_at,
            covers_lsn: covers.clone(),
            fresh: false,
            state: None,
            last_refreshed_at: None,
            watermark_lsn: None,
            last_error: None,
        };
        let Some(wait) = wait.filter(|w| !w.is_zero()) else {
            return Ok(outcome);
        };
        let deadline = Instant::now() + wait;
        let poll = format!(
            "SELECT state, {}, last_error, last_lsn::text, written_at > $3, \
                    coalesce(last_lsn >= $4::text::pg_lsn, false) \
             FROM {} WHERE slot_name = $1 AND layer = 'gold' AND name = $2",
            iso("updated_at"),
            crate::status::SHOWN_STATUS
        );
        loop {
            let row = client
                .query_opt(&poll, &[&self.slot, &name, &asked, &covers])
                .await
                .map_err(Error::pg("read medallion.table_status"))
                .map_err(|e| from_postgres("read the model state", e))?;
            if let Some(r) = row {
                outcome.state = Some(r.field(0)?);
                outcome.last_refreshed_at = Some(r.field(1)?);
                outcome.last_error = r.field(2)?;
                outcome.watermark_lsn = r.field(3)?;
                let (after, covered): (bool, bool) = (r.field(4)?, r.field(5)?);
                let settled = outcome
                    .state
                    .as_deref()
                    .is_some_and(|s| matches!(s, "ok" | "up to date" | "failed" | "blocked"));
                if after && settled {
                    if outcome.state.as_deref() == Some("failed") || covered {
                        outcome.fresh = outcome.state.as_deref() != Some("failed");
                        return Ok(outcome);
                    }
                    // Recomputed, but before the lake had everything the
                    // request covers (the import's last changes were still
                    // on their way to bronze): ask again.
                    asked = ask(&client).await?.1;
                }
            }
            if Instant::now() >= deadline {
                return Ok(outcome);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Copy source table `table` (`schema.table`) again, through
    /// `medallion.resync`.
    pub async fn resync(&self, table: &str) -> Result<ResyncOutcome> {
        let Some((schema, name)) = table
            .split_once('.')
            .filter(|(s, t)| !s.is_empty() && !t.is_empty() && s.len() <= 63 && t.len() <= 63)
        else {
            return Err(Error::refused(
                Refusal::Invalid,
                format!("table {table:?}: give it as schema.table, e.g. public.res_partner"),
            ));
        };
        let client = self.db.client().await?;
        // The names reach Postgres as parameters, quoted there; a missing
        // table is NULL from to_regclass, then 42704 from resync.
        let found: Option<String> = client
            .query_one(
                "SELECT pg_catalog.to_regclass(pg_catalog.quote_ident($1) || '.' || pg_catalog.quote_ident($2))::text",
                &[&schema, &name],
            )
            .await
            .map_err(Error::pg("to_regclass"))
            .map_err(|e| from_postgres("resync", e))?
            .field(0)?;
        if found.is_none() {
            return Err(Error::refused(
                Refusal::NotFound,
                format!("no table {table:?} in the database"),
            ));
        }
        client
            .execute(
                "SELECT medallion.resync((pg_catalog.quote_ident($1) || '.' || pg_catalog.quote_ident($2))::regclass)",
                &[&schema, &name],
            )
            .await
            .map_err(Error::pg("medallion.resync"))
            .map_err(|e| from_postgres("resync", e))?;
        Ok(ResyncOutcome {
            table: format!("{schema}.{name}"),
            requested: true,
        })
    }

    /// Rows of gold model `name`, in key order (all columns when it has
    /// no keys).
    pub(crate) async fn gold_rows(
        &self,
        name: &str,
        columns: Option<&[String]>,
        offset: usize,
        limit: Option<usize>,
    ) -> Result<QueryResult> {
        let def = self.gold_def(name).await?;
        let limit = self.runner.row_limit(limit);
        self.runner
            .table("gold", name, columns, def.keys.as_deref(), offset, limit)
            .await
    }

    /// A read-only query over `silver.*` and `gold.*`.
    pub(crate) async fn query(&self, sql: &str, limit: Option<usize>) -> Result<QueryResult> {
        if sql.trim().is_empty() {
            return Err(Error::refused(Refusal::Invalid, "the query is empty"));
        }
        let defs = self.definitions().await?;
        let defined = |layer: &str, name: &str| match layer {
            "silver" => defs.0.iter().any(|d| d.name == name),
            "gold" => defs.1.iter().any(|d| d.name == name),
            _ => false,
        };
        let limit = self.runner.row_limit(limit);
        self.runner.sql(sql, defined, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_extension_grammar() {
        for ok in ["a", "_x", "open_receivables", &"x".repeat(63)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "A",
            "1a",
            "a-b",
            "a.b",
            "a b",
            "ä",
            &"x".repeat(64),
            "x;drop",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn timestamps_render_as_iso_utc() {
        assert_eq!(
            iso("t"),
            "pg_catalog.to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        );
    }
}
