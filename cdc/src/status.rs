//! Status written back to Postgres (`medallion.table_status`), throttled,
//! and kept in memory for `/metrics`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::bronze::TableId;
use crate::catalog::Field;
use crate::error::{Error, Result};
use crate::lsn::Lsn;

/// A layer of the lake, as `medallion.table_status.layer` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layer {
    Bronze,
    Silver,
    Gold,
}

impl Layer {
    /// The name `medallion.table_status` and `medallion.runs` store.
    pub const fn as_str(self) -> &'static str {
        match self {
            Layer::Bronze => "bronze",
            Layer::Silver => "silver",
            Layer::Gold => "gold",
        }
    }
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a table or model, as `medallion.table_status.state` and
/// `medallion.status()` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ObjectState {
    /// Bronze: the initial copy (or a resync's) is running.
    Snapshotting,
    /// Bronze: changes stream in.
    #[default]
    Streaming,
    /// Silver or gold: at the cycle's watermark.
    Ok,
    /// Silver: cannot reach the watermark yet (its copy is not committed, or
    /// the stream has not passed it). Not an error.
    Waiting,
    /// Gold: an input is not available this cycle.
    Blocked,
    /// Gold: not refreshed because nothing asks for it (query and inputs
    /// unchanged, manual, not due). Recorded as [`ObjectState::Ok`].
    UpToDate,
    /// Stopped by a definite error until the data, the definition or a
    /// resync fixes it; everything else goes on.
    Failed,
}

impl ObjectState {
    /// The text `medallion.table_status.state` stores.
    pub const fn as_str(self) -> &'static str {
        match self {
            ObjectState::Snapshotting => "snapshotting",
            ObjectState::Streaming => "streaming",
            ObjectState::Ok => "ok",
            ObjectState::Waiting => "waiting",
            ObjectState::Blocked => "blocked",
            ObjectState::UpToDate => "up to date",
            ObjectState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for ObjectState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one refinement cycle did to one silver table or gold model.
#[derive(Debug, Clone)]
pub struct TableOutcome {
    pub layer: Layer,
    pub name: String,
    pub state: ObjectState,
    pub watermark: Option<Lsn>,
    pub rows_in: u64,
    pub rows_out: u64,
    pub version: Option<i64>,
    pub error: Option<String>,
}

impl TableOutcome {
    /// Whether the cycle at watermark `cycle` proved this object up to date
    /// at it: its status row then follows the refiner's position
    /// (`medallion.refiner_position`) until a cycle finds otherwise, instead
    /// of being rewritten as the watermark moves.
    pub(crate) fn follows(&self, cycle: Lsn) -> bool {
        self.state == ObjectState::Ok && self.watermark == Some(cycle)
    }

    pub(crate) fn failed(layer: Layer, name: &str, message: String) -> TableOutcome {
        TableOutcome {
            layer,
            name: name.to_string(),
            state: ObjectState::Failed,
            watermark: None,
            rows_in: 0,
            rows_out: 0,
            version: None,
            error: Some(message),
        }
    }
}

/// Write the status of a silver table or gold model the cycle at watermark
/// `cycle` ran, and with `run` (it did work, or failed) its row in
/// `medallion.runs`, with the counts of its expectations (`rule →
/// {on_violation, failed}`).
///
/// This module is the one writer of `medallion.table_status` and
/// `medallion.refiner_position`: bronze rows through [`StatusBoard`],
/// refined ones here, in [`record_quiet`] and in [`record_position`].
pub(crate) async fn record(
    client: &Client,
    slot: &str,
    cycle: Lsn,
    outcome: &TableOutcome,
    started: chrono::DateTime<chrono::Utc>,
    expectations: Option<serde_json::Value>,
    run: bool,
) -> Result<()> {
    let lsn = outcome.watermark;
    client
        .execute(
            "INSERT INTO medallion.table_status AS s (slot_name, layer, name, state, last_lsn, delta_version, \
                rows_total, last_error, last_commit_at, updated_at, follows_refiner) \
             VALUES ($1, $2, $3, $4, $5::pg_lsn, $6, $7, $8, \
                CASE WHEN $4 = 'ok' THEN clock_timestamp() END, clock_timestamp(), $9) \
             ON CONFLICT (slot_name, layer, name) DO UPDATE SET state = EXCLUDED.state, \
                last_lsn = COALESCE(EXCLUDED.last_lsn, s.last_lsn), \
                delta_version = COALESCE(EXCLUDED.delta_version, s.delta_version), \
                rows_total = CASE WHEN EXCLUDED.layer = 'gold' AND EXCLUDED.state = 'ok' THEN EXCLUDED.rows_total \
                                  ELSE s.rows_total + EXCLUDED.rows_total END, \
                last_error = EXCLUDED.last_error, \
                last_commit_at = COALESCE(EXCLUDED.last_commit_at, s.last_commit_at), \
                updated_at = EXCLUDED.updated_at, follows_refiner = EXCLUDED.follows_refiner",
            &[
                &slot,
                &outcome.layer.as_str(),
                &outcome.name,
                &outcome.state.as_str(),
                &lsn,
                &outcome.version,
                &(outcome.rows_out as i64),
                &outcome.error,
                &outcome.follows(cycle),
            ],
        )
        .await
        .map_err(Error::pg("write medallion.table_status"))?;
    if run {
        client
            .execute(
                "INSERT INTO medallion.runs (slot_name, layer, name, started_at, finished_at, rows_in, rows_out, \
                    expectations, watermark, status, error) \
                 VALUES ($1, $2, $3, $4, clock_timestamp(), $5, $6, $7, $8::pg_lsn, $9, $10)",
                &[
                    &slot,
                    &outcome.layer.as_str(),
                    &outcome.name,
                    &started,
                    &(outcome.rows_in as i64),
                    &(outcome.rows_out as i64),
                    &expectations,
                    &lsn,
                    &if outcome.state == ObjectState::Failed {
                        "failed"
                    } else {
                        "ok"
                    },
                    &outcome.error,
                ],
            )
            .await
            .map_err(Error::pg("write medallion.runs"))?;
    }
    Ok(())
}

/// What one refiner last wrote for the objects its cycles did not run, so
/// that a cycle a second over hundreds of quiet tables does not rewrite
/// hundreds of status rows in the customer's database each time (every
/// such row is WAL that the slot's walsender decodes too).
///
/// A quiet row is written when its state, its error or whether it follows
/// the refiner changed, and when its object was asked for
/// (`medallion.refresh`). A row that follows the refiner (up to date at the
/// cycle's watermark: [`TableOutcome::follows`]) is not written again while
/// it does: its position is the refiner's, one row a slot
/// ([`record_position`], at most every `status_interval_ms`). Any other
/// quiet row is written again at most every `status_interval_ms`.
#[derive(Debug, Default)]
pub(crate) struct QuietStatus {
    written: std::collections::HashMap<(Layer, String), Written>,
    /// When the refiner's position was last written.
    position: Throttle,
    /// When this refiner last deleted expired rows of `medallion.runs`.
    runs_pruned: Throttle,
}

/// Something done at most once per interval: the first time at once.
#[derive(Debug, Default)]
struct Throttle(Option<Instant>);

impl Throttle {
    /// Whether it is due at `now` (`every` after the last time); when it
    /// is, it is taken as done now.
    fn due(&mut self, every: Duration, now: Instant) -> bool {
        if self.0.is_some_and(|at| now.duration_since(at) < every) {
            return false;
        }
        self.0 = Some(now);
        true
    }

    /// It was not done after all (or must go on): due again at once.
    fn again(&mut self) {
        self.0 = None;
    }
}

#[derive(Debug)]
struct Written {
    state: ObjectState,
    error: Option<String>,
    follows: bool,
    at: Instant,
}

impl QuietStatus {
    /// Of `outcomes` of the cycle at watermark `cycle`, those to write now
    /// (`asked`: the object was asked for by name); they are taken as
    /// written.
    pub(crate) fn due(
        &mut self,
        outcomes: &[TableOutcome],
        cycle: Lsn,
        asked: impl Fn(&TableOutcome) -> bool,
        every: Duration,
        now: Instant,
    ) -> Vec<TableOutcome> {
        let mut due = Vec::new();
        for o in outcomes {
            let key = (o.layer, o.name.clone());
            let follows = o.follows(cycle);
            let fresh = self.written.get(&key).is_some_and(|w| {
                w.state == o.state
                    && w.error == o.error
                    && w.follows == follows
                    && (follows || now.duration_since(w.at) < every)
            });
            if fresh && !asked(o) {
                continue;
            }
            self.written.insert(
                key,
                Written {
                    state: o.state,
                    error: o.error.clone(),
                    follows,
                    at: now,
                },
            );
            due.push(o.clone());
        }
        due
    }

    /// The cycle at watermark `cycle` ran `outcome`'s object and wrote its
    /// status at `now`.
    pub(crate) fn ran(&mut self, outcome: &TableOutcome, cycle: Lsn, now: Instant) {
        self.written.insert(
            (outcome.layer, outcome.name.clone()),
            Written {
                state: outcome.state,
                error: outcome.error.clone(),
                follows: outcome.follows(cycle),
                at: now,
            },
        );
    }

    /// `outcomes` were not written after all (the write failed).
    pub(crate) fn forget(&mut self, outcomes: &[TableOutcome]) {
        for o in outcomes {
            self.written.remove(&(o.layer, o.name.clone()));
        }
    }

    /// Whether to write the refiner's position now: the first time, and
    /// then at most every `every` (while it moves, and to show the refiner
    /// alive while it does not). Taken as written.
    pub(crate) fn position_due(&mut self, every: Duration, now: Instant) -> bool {
        self.position.due(every, now)
    }

    /// The position was not written after all (the write failed).
    pub(crate) fn forget_position(&mut self) {
        self.position.again();
    }

    /// Whether to delete expired rows of `medallion.runs` now: at a
    /// refiner's first cycle, then at most every [`RUNS_PRUNE_EVERY`].
    /// Taken as done (a failure is retried at the next due time).
    pub(crate) fn runs_prune_due(&mut self, now: Instant) -> bool {
        self.runs_pruned.due(RUNS_PRUNE_EVERY, now)
    }

    /// More expired rows are left: the next cycle deletes again.
    pub(crate) fn runs_prune_unfinished(&mut self) {
        self.runs_pruned.again();
    }
}

/// How often a refiner deletes the expired rows of `medallion.runs`.
const RUNS_PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Rows of `medallion.runs` deleted per statement, so no transaction holds
/// many row locks or much WAL.
const RUNS_PRUNE_BATCH: i64 = 10_000;

/// Statements of [`RUNS_PRUNE_BATCH`] rows one cycle runs at most: a long
/// history (the first cycle after an upgrade, say) is deleted over several
/// cycles instead of holding one back.
const RUNS_PRUNE_BATCHES_PER_CYCLE: usize = 10;

/// Delete `slot`'s rows of `medallion.runs` that started more than `days`
/// ago, except the latest run of each silver table and gold model (a
/// `manual` model's last run stays visible however old), at most
/// [`RUNS_PRUNE_BATCHES_PER_CYCLE`] statements of them. Returns how many
/// were deleted and whether more may be left. A refiner that starts a cycle
/// on every bronze commit writes a row per table or model that did
/// something in each: without this, the history grows without end in the
/// customer's database.
pub(crate) async fn prune_runs(client: &Client, slot: &str, days: u64) -> Result<(u64, bool)> {
    let days = i32::try_from(days)
        .map_err(|_| Error::Config(format!("runs_retention_days {days} is too large")))?;
    let mut deleted = 0;
    for _ in 0..RUNS_PRUNE_BATCHES_PER_CYCLE {
        let n = client
            .execute(
                "DELETE FROM medallion.runs WHERE id IN ( \
                    SELECT r.id FROM medallion.runs r \
                     WHERE r.started_at < pg_catalog.clock_timestamp() - pg_catalog.make_interval(days => $2) \
                       AND r.slot_name = $1 \
                       AND EXISTS (SELECT 1 FROM medallion.runs n \
                                    WHERE n.layer = r.layer AND n.name = r.name \
                                      AND n.slot_name = r.slot_name AND n.started_at > r.started_at) \
                     ORDER BY r.started_at LIMIT $3)",
                &[&slot, &days, &RUNS_PRUNE_BATCH],
            )
            .await
            .map_err(Error::pg("delete expired rows of medallion.runs"))?;
        deleted += n;
        if n < RUNS_PRUNE_BATCH as u64 {
            return Ok((deleted, false));
        }
    }
    Ok((deleted, true))
}

/// The refiner's position: the watermark `cycle` of the cycle that just
/// wrote its status rows, which every row that follows the refiner is at.
/// `objects` (`layer.name`) are the silver tables and gold models the cycle
/// had; a row of any other (a dropped definition) stops following in the
/// same statement, so it never shows a position its object did not reach.
pub(crate) async fn record_position(
    client: &Client,
    slot: &str,
    cycle: Lsn,
    objects: &[String],
) -> Result<()> {
    client
        .execute(
            "WITH gone AS ( \
                UPDATE medallion.table_status SET follows_refiner = false \
                 WHERE slot_name = $1 AND follows_refiner \
                   AND NOT ((layer || '.' || name) = ANY ($3::text[]))) \
             INSERT INTO medallion.refiner_position AS p (slot_name, watermark, updated_at) \
             VALUES ($1, $2::pg_lsn, clock_timestamp()) \
             ON CONFLICT (slot_name) DO UPDATE SET watermark = EXCLUDED.watermark, \
                updated_at = EXCLUDED.updated_at",
            &[&slot, &cycle, &objects],
        )
        .await
        .map_err(Error::pg("write medallion.refiner_position"))?;
    Ok(())
}

/// The status of tables and models a cycle did not run (nothing new,
/// waiting, blocked), in one statement: their position and state move, their
/// row counts stay.
pub(crate) async fn record_quiet(
    client: &Client,
    slot: &str,
    cycle: Lsn,
    outcomes: &[TableOutcome],
) -> Result<()> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&TableOutcome) -> Option<String>| -> Vec<Option<String>> {
        outcomes.iter().map(f).collect()
    };
    let layers = column(|o| Some(o.layer.to_string()));
    let names = column(|o| Some(o.name.clone()));
    let states = column(|o| Some(o.state.to_string()));
    let lsns = column(|o| o.watermark.map(|w| w.to_string()));
    let errors = column(|o| o.error.clone());
    let versions: Vec<Option<i64>> = outcomes.iter().map(|o| o.version).collect();
    let follows: Vec<bool> = outcomes.iter().map(|o| o.follows(cycle)).collect();
    client
        .execute(
            "INSERT INTO medallion.table_status AS s (slot_name, layer, name, state, last_lsn, delta_version, \
                rows_total, last_error, last_commit_at, updated_at, follows_refiner) \
             SELECT $1, u.layer, u.name, u.state, u.lsn::pg_lsn, u.version, 0, u.error, \
                CASE WHEN u.state = 'ok' THEN clock_timestamp() END, clock_timestamp(), u.follows \
             FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::text[], $8::bool[]) \
                AS u(layer, name, state, lsn, version, error, follows) \
             ON CONFLICT (slot_name, layer, name) DO UPDATE SET state = EXCLUDED.state, \
                last_lsn = COALESCE(EXCLUDED.last_lsn, s.last_lsn), \
                delta_version = COALESCE(EXCLUDED.delta_version, s.delta_version), \
                last_error = EXCLUDED.last_error, \
                last_commit_at = COALESCE(EXCLUDED.last_commit_at, s.last_commit_at), \
                updated_at = EXCLUDED.updated_at, follows_refiner = EXCLUDED.follows_refiner",
            &[&slot, &layers, &names, &states, &lsns, &versions, &errors, &follows],
        )
        .await
        .map_err(Error::pg("write medallion.table_status"))?;
    Ok(())
}

/// `medallion.table_status` as `medallion.status()` shows it (the same rule
/// as that function in `pg_ext/sql/bootstrap.sql`), aliased `t`, for the
/// readers that also need `written_at`, which `status()` does not return:
/// a row that follows the refiner has the refiner's position and time as its
/// `last_lsn` and `updated_at`; `written_at` is when the row itself was
/// last written (a refresh that was asked for is written).
pub(crate) const SHOWN_STATUS: &str = "(SELECT s.slot_name, s.layer, s.name, s.state, s.delta_version, \
        s.rows_total, s.last_error, s.updated_at AS written_at, \
        CASE WHEN s.follows_refiner THEN GREATEST(s.last_lsn, r.watermark) ELSE s.last_lsn END AS last_lsn, \
        CASE WHEN s.follows_refiner THEN GREATEST(s.updated_at, r.updated_at) ELSE s.updated_at END AS updated_at \
     FROM medallion.table_status s \
     LEFT JOIN medallion.refiner_position r ON r.slot_name = s.slot_name) t";

/// State of one bronze table as shown in `medallion.status()`.
#[derive(Debug, Clone, Default)]
pub struct TableStatus {
    pub state: ObjectState,
    pub last_lsn: Option<Lsn>,
    pub last_commit_us: Option<i64>,
    pub delta_version: Option<i64>,
    /// Rows written since the last status write.
    pub new_rows: i64,
    pub last_error: Option<String>,
    dirty: bool,
}

/// Collects table states and writes them at most every `interval`.
pub struct StatusBoard {
    slot: String,
    enabled: bool,
    interval: Duration,
    last_write: Option<Instant>,
    tables: BTreeMap<TableId, TableStatus>,
}

impl StatusBoard {
    pub fn new(slot: &str, enabled: bool, interval: Duration) -> Self {
        StatusBoard {
            slot: slot.to_string(),
            enabled,
            interval,
            last_write: None,
            tables: BTreeMap::new(),
        }
    }

    pub fn update(&mut self, id: &TableId, f: impl FnOnce(&mut TableStatus)) {
        let s = self.tables.entry(id.clone()).or_default();
        f(s);
        s.dirty = true;
    }

    /// Write dirty rows if the interval has passed (or `force`).
    pub async fn flush(&mut self, client: &Client, force: bool) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if !force && self.last_write.is_some_and(|t| t.elapsed() < self.interval) {
            return Ok(());
        }
        let stmt = client
            .prepare(
                "INSERT INTO medallion.table_status AS s (slot_name, layer, name, state, last_lsn, last_commit_at, \
                    delta_version, rows_total, lag_seconds, last_error, updated_at) \
                 VALUES ($1, 'bronze', $2, $3, $4::pg_lsn, to_timestamp($5::float8), $6, $7, \
                    extract(epoch FROM clock_timestamp())::float8 - $5::float8, $8, clock_timestamp()) \
                 ON CONFLICT (slot_name, layer, name) DO UPDATE SET state = EXCLUDED.state, \
                    last_lsn = COALESCE(EXCLUDED.last_lsn, s.last_lsn), \
                    last_commit_at = COALESCE(EXCLUDED.last_commit_at, s.last_commit_at), \
                    delta_version = COALESCE(EXCLUDED.delta_version, s.delta_version), \
                    rows_total = s.rows_total + EXCLUDED.rows_total, lag_seconds = EXCLUDED.lag_seconds, \
                    last_error = EXCLUDED.last_error, updated_at = EXCLUDED.updated_at",
            )
            .await
            .map_err(Error::pg("prepare status write"))?;
        for (id, s) in self.tables.iter_mut().filter(|(_, s)| s.dirty) {
            let commit_secs = s.last_commit_us.map(|us| us as f64 / 1e6);
            client
                .execute(
                    &stmt,
                    &[
                        &self.slot,
                        &id.to_string(),
                        &s.state.as_str(),
                        &s.last_lsn,
                        &commit_secs,
                        &s.delta_version,
                        &s.new_rows,
                        &s.last_error,
                    ],
                )
                .await
                .map_err(Error::pg("write medallion.table_status"))?;
            s.new_rows = 0;
            s.dirty = false;
        }
        self.last_write = Some(Instant::now());
        Ok(())
    }
}

/// How a slot's pipeline is doing, as `medallion status` summarises it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// The slot exists, is held by a sidecar, and its WAL is kept.
    pub slot: Option<SlotHealth>,
    /// Objects per layer and state: `(layer, state) → names`.
    pub objects: BTreeMap<(String, String), Vec<String>>,
    /// Seconds since silver or gold last finished a table in a good state
    /// (`ok` or `up to date`); `None` before the first cycle.
    pub refined_ago_s: Option<f64>,
}

/// The slot as Postgres reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotHealth {
    pub active: bool,
    pub wal_status: String,
    pub lag_bytes: i64,
}

impl Health {
    /// Failed objects, `layer.name`.
    pub fn failed(&self) -> Vec<String> {
        self.objects
            .iter()
            .filter(|((_, state), _)| state == "failed")
            .flat_map(|((layer, _), names)| names.iter().map(move |n| format!("{layer}.{n}")))
            .collect()
    }

    /// Degraded: an object failed, or the slot is missing or lost its WAL.
    pub fn degraded(&self) -> bool {
        !self.failed().is_empty() || self.slot.as_ref().is_none_or(|s| s.wal_status == "lost")
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let failed = self.failed();
        if self.degraded() {
            write!(f, "DEGRADED")?;
        } else {
            write!(f, "healthy")?;
        }
        match &self.slot {
            None => write!(f, "; slot missing: `medallion run` creates it")?,
            Some(s) => write!(
                f,
                "; slot {} ({}), {} bytes behind",
                if s.active {
                    "streaming"
                } else {
                    "idle: no sidecar holds it"
                },
                s.wal_status,
                s.lag_bytes
            )?,
        }
        if !failed.is_empty() {
            write!(f, "; failed: {}", failed.join(", "))?;
        }
        for ((layer, state), names) in &self.objects {
            if state != "failed" && state != "ok" && state != "up to date" {
                write!(f, "; {layer} {state}: {}", names.len())?;
            }
        }
        match self.refined_ago_s {
            Some(s) => write!(f, "; last refined {s:.0} s ago"),
            None => write!(f, "; not refined yet"),
        }
    }
}

/// [`Health`] for `slot`: its objects as `(layer, name, state)` — the rows
/// of `medallion.status()` the caller already read — then the slot and the
/// time of the last refresh.
pub async fn health(
    client: &Client,
    slot: &str,
    objects: impl IntoIterator<Item = (String, String, String)>,
) -> Result<Health> {
    let mut health = Health::default();
    for (layer, name, state) in objects {
        health.objects.entry((layer, state)).or_default().push(name);
    }
    health.slot = client
        .query_opt(
            "SELECT active, coalesce(wal_status, ''), \
                    coalesce(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), confirmed_flush_lsn), 0)::int8 \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(Error::pg("read the slot"))?
        .map(|r| {
            Ok::<_, Error>(SlotHealth {
                active: r.field(0)?,
                wal_status: r.field(1)?,
                lag_bytes: r.field(2)?,
            })
        })
        .transpose()?;
    health.refined_ago_s = client
        .query_one(
            "SELECT extract(epoch FROM pg_catalog.clock_timestamp() - max(updated_at))::float8 \
             FROM medallion.status() WHERE slot_name = $1 AND layer IN ('silver', 'gold') \
               AND state IN ('ok', 'up to date')",
            &[&slot],
        )
        .await
        .map_err(Error::pg("read medallion.table_status"))?
        .get(0);
    Ok(health)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_degraded_by_a_failed_object_or_a_lost_slot() {
        let mut h = Health {
            slot: Some(SlotHealth {
                active: true,
                wal_status: "reserved".into(),
                lag_bytes: 120,
            }),
            refined_ago_s: Some(3.2),
            ..Default::default()
        };
        h.objects
            .insert(("silver".into(), "ok".into()), vec!["a".into(), "b".into()]);
        assert!(!h.degraded());
        assert_eq!(
            h.to_string(),
            "healthy; slot streaming (reserved), 120 bytes behind; last refined 3 s ago"
        );
        h.objects
            .insert(("gold".into(), "failed".into()), vec!["m".into()]);
        h.objects
            .insert(("gold".into(), "blocked".into()), vec!["n".into()]);
        assert!(h.degraded());
        assert_eq!(
            h.to_string(),
            "DEGRADED; slot streaming (reserved), 120 bytes behind; failed: gold.m; gold blocked: 1; \
             last refined 3 s ago"
        );
        h.objects.clear();
        h.slot.as_mut().expect("slot").wal_status = "lost".into();
        assert!(h.degraded());
        h.slot = None;
        assert!(h.degraded());
        assert!(h.to_string().contains("slot missing"));
    }

    #[test]
    fn a_quiet_row_is_rewritten_when_it_changed_was_asked_for_or_is_due() {
        let t0 = Instant::now();
        let every = Duration::from_secs(2);
        let at = |ms| t0 + Duration::from_millis(ms);
        let quiet = |name: &str, state, error: Option<&str>| TableOutcome {
            layer: Layer::Silver,
            name: name.into(),
            state,
            watermark: Some(Lsn::new(1)),
            rows_in: 0,
            rows_out: 0,
            version: None,
            error: error.map(String::from),
        };
        let names = |v: Vec<TableOutcome>| v.into_iter().map(|o| o.name).collect::<Vec<_>>();
        let no = |_: &TableOutcome| false;
        // The cycles' watermark is past the rows' own: none follows the
        // refiner (see the next test).
        let behind = Lsn::new(2);
        let mut w = QuietStatus::default();
        let cycle = [
            quiet("a", ObjectState::Ok, None),
            quiet("b", ObjectState::Waiting, Some("bronze not there yet")),
        ];
        // Never written: both.
        assert_eq!(names(w.due(&cycle, behind, no, every, at(0))), ["a", "b"]);
        // Unchanged within the interval: neither, unless asked for.
        assert!(w.due(&cycle, behind, no, every, at(500)).is_empty());
        assert_eq!(
            names(w.due(&cycle, behind, |o| o.name == "b", every, at(600))),
            ["b"]
        );
        // A changed state or error: at once.
        let moved = [
            quiet("a", ObjectState::Blocked, None),
            quiet("b", ObjectState::Waiting, Some("another reason")),
        ];
        assert_eq!(names(w.due(&moved, behind, no, every, at(700))), ["a", "b"]);
        // Due again after the interval.
        assert!(w.due(&moved, behind, no, every, at(2600)).is_empty());
        assert_eq!(
            names(w.due(&moved, behind, no, every, at(2700))),
            ["a", "b"]
        );
        // A run's own write counts; a failed write does not.
        let ran = quiet("a", ObjectState::Ok, None);
        w.ran(&ran, behind, at(3000));
        assert!(
            w.due(std::slice::from_ref(&ran), behind, no, every, at(3100))
                .is_empty()
        );
        w.forget(std::slice::from_ref(&ran));
        assert_eq!(names(w.due(&[ran], behind, no, every, at(3200))), ["a"]);
    }

    #[test]
    fn a_row_up_to_date_at_the_cycle_follows_the_refiner_and_is_not_rewritten() {
        let t0 = Instant::now();
        let every = Duration::from_secs(2);
        let at = |ms| t0 + Duration::from_millis(ms);
        let outcome = |state, watermark: u64| TableOutcome {
            layer: Layer::Gold,
            name: "m".into(),
            state,
            watermark: Some(Lsn::new(watermark)),
            rows_in: 0,
            rows_out: 0,
            version: None,
            error: None,
        };
        let no = |_: &TableOutcome| false;
        let mut w = QuietStatus::default();
        // Up to date at the cycle's watermark: written once, as following.
        let at_10 = outcome(ObjectState::Ok, 10);
        assert!(at_10.follows(Lsn::new(10)));
        assert_eq!(w.due(&[at_10], Lsn::new(10), no, every, at(0)).len(), 1);
        // Later cycles where it is still up to date: never again, however
        // long (its position is the refiner's).
        for (cycle, ms) in [(11, 500), (20, 5_000), (30, 60_000)] {
            let o = outcome(ObjectState::Ok, cycle);
            assert!(w.due(&[o], Lsn::new(cycle), no, every, at(ms)).is_empty());
        }
        // Still ok, but held at its own older watermark (a model on an
        // interval that is not due): it stops following, written at once.
        let held = outcome(ObjectState::Ok, 30);
        assert!(!held.follows(Lsn::new(40)));
        assert_eq!(w.due(&[held], Lsn::new(40), no, every, at(60_100)).len(), 1);
        // Not following: rewritten every interval again.
        let held = outcome(ObjectState::Ok, 30);
        assert!(
            w.due(
                std::slice::from_ref(&held),
                Lsn::new(41),
                no,
                every,
                at(61_000)
            )
            .is_empty()
        );
        assert_eq!(w.due(&[held], Lsn::new(42), no, every, at(62_200)).len(), 1);
        // Neither a failed nor a blocked object follows.
        assert!(!TableOutcome::failed(Layer::Gold, "m", "x".into()).follows(Lsn::new(42)));
        assert!(!outcome(ObjectState::Blocked, 42).follows(Lsn::new(42)));
    }

    #[test]
    fn the_refiner_position_is_written_first_then_at_most_every_interval() {
        let t0 = Instant::now();
        let every = Duration::from_secs(2);
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut w = QuietStatus::default();
        assert!(w.position_due(every, at(0)));
        assert!(!w.position_due(every, at(1_999)));
        assert!(w.position_due(every, at(2_000)));
        // A failed write is tried again at the next cycle.
        w.forget_position();
        assert!(w.position_due(every, at(2_100)));
    }
}
