//! Gold: SQL models on DataFusion over silver and gold tables.
//!
//! ```text
//!  silver.<a> silver.<b> gold.<c>   (Delta versions pinned for this cycle)
//!        └──────┬──────┘
//!     DataFusion SQL (PostgreSQL dialect)
//!               ▼
//!  expectations ── warn · drop → quarantine/<name> · fail → not published
//!               ▼
//!  gold/<name>   full overwrite, or by `keys`: the difference with the table
//!                (deletion vectors + appended rows, handed to the publication)
//!                txn(medallion:gold:<name>) = watermark
//! ```
//!
//! A model is refreshed when its policy says so (`on_change`: an input's
//! Delta version differs from the one recorded at the last refresh, under
//! `medallion:gold:<name>:input:<table>`; `interval`: the same, at most once
//! per interval; `manual`: on `medallion.refresh(name)`). Its watermark is the
//! lowest watermark of its inputs, recorded as the `txn` version.
//!
//! # Where things are
//!
//! - this module: [`Refiner::refresh_gold`] wires the Delta tables (and the
//!   cycle's cache, compaction and row count) to `Refiner::compute`, the
//!   refresh itself — the decision to skip, the query, the expectations,
//!   the commit — written against the seams of [`store`];
//! - [`store`]: `GoldInput` (what a refresh reads) and `GoldStore` (what it
//!   writes, with its durability contract) and their Delta implementations;
//! - `memory` (tests only): both seams in memory, and the unit tests of a
//!   refresh (on change, manual, interval, a failing expectation, keyed
//!   MERGE and type changes, a missing input).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use arrow::array::{BooleanArray, RecordBatch};
use deltalake::DeltaTable;

use crate::catalog::{GoldDef, OnViolation, Refresh};
use crate::error::{Error, Result};
use crate::expectations::{RuleCount, describe_key, evaluate_predicate};
use crate::lake;
use crate::lsn::Lsn;
use crate::refine::Refiner;

#[cfg(test)]
mod memory;
mod store;

use store::{Commit, DeltaGold, GoldInput, GoldStore, Recorded, Rows};

/// An input of a gold refresh: a table at a pinned version and its watermark.
#[derive(Clone)]
pub struct Input {
    pub table: DeltaTable,
    pub watermark: Lsn,
}

/// What a gold refresh did.
#[derive(Debug, Clone, Default)]
pub struct GoldReport {
    pub rows_out: u64,
    pub expectations: BTreeMap<String, RuleCount>,
    pub version: Option<i64>,
    pub watermark: Lsn,
    /// Not refreshed: why (up to date, not due).
    pub skipped: Option<&'static str>,
    /// The difference a keyed refresh wrote, for the model's publication.
    pub(crate) handover: Option<std::sync::Arc<lake::difference::Handover>>,
}

fn query_hash(def: &GoldDef) -> i64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    def.query.hash(&mut h);
    def.keys.hash(&mut h);
    (h.finish() & (i64::MAX as u64)) as i64
}

/// Why a gold model is not recomputed this cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    /// Same query, same input versions: nothing could differ.
    UpToDate,
    /// Inputs moved, but the model refreshes only on `medallion.refresh()`.
    Manual,
    /// Inputs moved, but its interval has not passed since the last refresh.
    NotDue,
}

impl Skip {
    fn as_str(self) -> &'static str {
        match self {
            Skip::UpToDate => "up to date",
            Skip::Manual => "manual",
            Skip::NotDue => "not due",
        }
    }
}

/// Whether (and why not) to recompute a model whose table exists and
/// records `recorded`, given its `policy`, a `forced` refresh, its query's
/// `fingerprint` and its inputs' `current` versions. A forced refresh or a
/// changed query always recomputes; the policy only holds back a model whose
/// inputs moved.
fn skip_refresh(
    policy: Refresh,
    forced: bool,
    fingerprint: i64,
    current: &[Option<i64>],
    recorded: &Recorded,
    now_ms: i64,
) -> Option<Skip> {
    if forced || recorded.query != Some(fingerprint) {
        return None;
    }
    if recorded.inputs == current {
        return Some(Skip::UpToDate);
    }
    match policy {
        Refresh::Manual => Some(Skip::Manual),
        Refresh::Interval(every) => recorded
            .refreshed_at_ms
            .is_some_and(|ms| now_ms - ms < every.as_millis() as i64)
            .then_some(Skip::NotDue),
        Refresh::OnChange => None,
    }
}

/// The lowest watermark of the model's inputs (what it reflects).
fn watermark_of<I: GoldInput>(def: &GoldDef, inputs: &HashMap<String, I>) -> Lsn {
    def.upstream
        .iter()
        .filter_map(|u| inputs.get(u).map(|i| i.watermark()))
        .min()
        .unwrap_or(Lsn::ZERO)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn model_error(name: &str, e: impl std::fmt::Display) -> Error {
    Error::Model {
        model: name.to_string(),
        message: e.to_string(),
    }
}

/// How far a refresh got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Not recomputed (`GoldReport::skipped` says why).
    Skipped(Skip),
    /// Recomputed and committed; `counted`: `rows_out` is known.
    Written { counted: bool },
}

impl Refiner<'_> {
    /// Refresh gold model `def` from `inputs` (keyed `silver.<n>`/`gold.<n>`)
    /// if its policy says so, or `forced`.
    pub async fn refresh_gold(
        &self,
        def: &GoldDef,
        inputs: &HashMap<String, Input>,
        forced: bool,
    ) -> Result<GoldReport> {
        let url = self.lake.refined_url("gold", &def.name)?;
        let fingerprint = query_hash(def);
        // An on-change model whose query and inputs' versions are those it
        // was last computed from is up to date without a look at its log.
        let settle_key = format!("gold.{}", def.name);
        let proof = (!forced && matches!(def.refresh, Refresh::OnChange)).then(|| {
            std::iter::once(fingerprint)
                .chain(def.upstream.iter().map(|u| {
                    inputs
                        .get(u)
                        .and_then(|i| i.table.version())
                        .map_or(-1, |v| v as i64)
                }))
                .collect::<Vec<i64>>()
        });
        if let Some(p) = &proof
            && let Some(version) = self.tables.settled(&settle_key, p)
        {
            return Ok(GoldReport {
                watermark: watermark_of(def, inputs),
                skipped: Some("up to date"),
                version,
                ..GoldReport::default()
            });
        }
        let mut store = DeltaGold {
            table: self.tables.open(self.lake, &url).await?,
            url: url.clone(),
            refiner: self,
            written: None,
        };
        let (mut report, progress) = self
            .compute(def, inputs, forced, now_ms(), &mut store)
            .await?;
        match progress {
            Progress::Skipped(Skip::UpToDate) => {
                if let Some(p) = proof {
                    self.tables.settle(&settle_key, p, report.version);
                }
            }
            Progress::Skipped(_) => {}
            Progress::Written { counted } => {
                let written = store
                    .table
                    .ok_or_else(|| Error::Protocol(format!("gold.{} not written", def.name)))?;
                let before = written.version();
                let table;
                (table, report.version) = self
                    .keep_written(written, &url, Some(crate::optimize::Layout::GOLD))
                    .await?;
                self.tables
                    .fingerprints_follow(&url, before, table.version());
                // A compaction after the write changes no row: the
                // difference still leads to the version kept.
                if def.publish.is_some()
                    && let Some((from, difference)) = store.written
                    && let (Some(to), Some(table_id), Some(keys)) = (
                        table.version(),
                        lake::difference::table_id(&table),
                        def.keys.clone(),
                    )
                {
                    report.handover = Some(std::sync::Arc::new(lake::difference::Handover {
                        table_id,
                        keys,
                        from,
                        to,
                        difference,
                    }));
                }
                if let Some(p) = proof {
                    self.tables.settle(&settle_key, p, report.version);
                }
                if !counted && report.rows_out == 0 {
                    let count = lake::session();
                    lake::register(&count, "g", &table).await?;
                    report.rows_out = crate::expectations::count_of(
                        &lake::collect(&count, "SELECT count(*) FROM g").await?,
                    )?;
                }
            }
        }
        Ok(report)
    }

    /// One refresh over any inputs and gold store (see [`store`]): the
    /// decision to skip, the query, the expectations and the commit.
    pub(crate) async fn compute<I: GoldInput>(
        &self,
        def: &GoldDef,
        inputs: &HashMap<String, I>,
        forced: bool,
        now_ms: i64,
        store: &mut impl GoldStore,
    ) -> Result<(GoldReport, Progress)> {
        let watermark = watermark_of(def, inputs);
        let mut report = GoldReport {
            watermark,
            ..GoldReport::default()
        };
        let fingerprint = query_hash(def);
        let current: Vec<Option<i64>> = def
            .upstream
            .iter()
            .map(|u| inputs.get(u).and_then(|i| i.version()))
            .collect();
        if let Some(recorded) = store.recorded(def).await?
            && let Some(skip) = skip_refresh(
                def.refresh,
                forced,
                fingerprint,
                &current,
                &recorded,
                now_ms,
            )
        {
            report.skipped = Some(skip.as_str());
            report.version = store.version();
            if matches!(skip, Skip::Manual | Skip::NotDue) {
                report.watermark = recorded.watermark.unwrap_or(Lsn::ZERO);
            }
            return Ok((report, Progress::Skipped(skip)));
        }
        let ctx = lake::session();
        lake::ensure_layer_schemas(&ctx)?;
        for u in &def.upstream {
            let input = inputs.get(u).ok_or_else(|| {
                model_error(&def.name, format!("input {u} is not available this cycle"))
            })?;
            input.register(&ctx, u).await?;
        }
        let df = crate::pg_sql::plan(&ctx, &def.query, self.numeric_scale)
            .await
            .map_err(|e| model_error(&def.name, e))?;
        let commit = Commit {
            watermark,
            query: fingerprint,
            refreshed_at_ms: now_ms,
            inputs: def
                .upstream
                .iter()
                .filter_map(|u| inputs.get(u)?.version().map(|v| (u.clone(), v)))
                .collect(),
        };
        // Expectations need the rows; a model without any streams into the write.
        let batches = if def.expectations.is_empty() {
            None
        } else {
            let mut batches = df
                .clone()
                .collect()
                .await
                .map_err(|e| model_error(&def.name, e))?;
            batches = self
                .check_gold(def, &ctx, batches, watermark, &mut report)
                .await?;
            report.rows_out = batches.iter().map(|b| b.num_rows() as u64).sum();
            Some(batches)
        };
        let counted = batches.is_some();
        crate::fault::hit(crate::fault::BEFORE_GOLD_COMMIT);
        // A keyed model MERGEs into its table while the result has the
        // table's column types; when they changed (a redefinition, a sum now
        // typed wider), the table is rewritten whole instead.
        // (The collected batches, when there are any, have the plan's schema.)
        let stored = store.stored_schema();
        let result_schema = df.schema().as_arrow();
        let same_types = stored.as_ref().is_some_and(|stored| {
            result_schema.fields().iter().all(|f| {
                stored.field_with_name(f.name()).is_ok_and(|s| {
                    lake::storage_type(s.data_type()) == lake::storage_type(f.data_type())
                })
            })
        });
        let keyed = def.keys.as_ref().filter(|_| stored.is_some());
        if keyed.is_some() && !same_types {
            tracing::warn!(gold = %def.name, "column types changed: the keyed model's table is rewritten whole");
        }
        match keyed.filter(|_| same_types) {
            Some(keys) => {
                let source = match batches {
                    Some(b) => ctx
                        .read_batches(b)
                        .map_err(Error::datafusion("gold merge source"))?,
                    None => df,
                };
                let columns: Vec<&String> =
                    source.schema().fields().iter().map(|f| f.name()).collect();
                for k in keys {
                    if !columns.contains(&k) {
                        return Err(model_error(
                            &def.name,
                            format!("key column {k} is not in the query's result"),
                        ));
                    }
                }
                let merged = store.merge_keyed(def, &ctx, source, keys, commit).await?;
                if !counted && let Some(n) = merged {
                    report.rows_out = n;
                }
            }
            None => {
                let rows = match batches {
                    Some(b) => Rows::Batches(b),
                    None => Rows::Plan(df),
                };
                store.replace(def, &ctx, rows, commit).await?;
            }
        }
        report.version = store.version();
        Ok((report, Progress::Written { counted }))
    }

    async fn check_gold(
        &self,
        def: &GoldDef,
        ctx: &deltalake::datafusion::prelude::SessionContext,
        batches: Vec<RecordBatch>,
        watermark: Lsn,
        report: &mut GoldReport,
    ) -> Result<Vec<RecordBatch>> {
        let schema = match batches.first() {
            Some(b) => b.schema(),
            None => return Ok(batches),
        };
        let mut all =
            arrow::compute::concat_batches(&schema, &batches).map_err(Error::arrow("gold rows"))?;
        for e in &def.expectations {
            let pass = evaluate_predicate(ctx, &all, &e.predicate)
                .await
                .map_err(|err| {
                    model_error(&def.name, format!("expectation \"{}\": {err}", e.name))
                })?;
            let failing: Vec<usize> = (0..all.num_rows()).filter(|&i| !pass.value(i)).collect();
            report.expectations.insert(
                e.name.clone(),
                RuleCount {
                    on_violation: e.on_violation.as_str(),
                    failed: failing.len() as u64,
                },
            );
            if failing.is_empty() {
                continue;
            }
            match e.on_violation {
                OnViolation::Warn => {}
                OnViolation::Fail => {
                    let keys = def.keys.clone().unwrap_or_else(|| {
                        schema
                            .fields()
                            .iter()
                            .take(2)
                            .map(|f| f.name().clone())
                            .collect()
                    });
                    let idx = arrow::array::UInt32Array::from(vec![failing[0] as u32]);
                    let ex = arrow::compute::take_record_batch(&all, &idx)
                        .map_err(Error::arrow("example row"))?;
                    return Err(Error::Expectation {
                        target: format!("gold.{}", def.name),
                        rule: e.name.clone(),
                        failed: failing.len() as u64,
                        example: describe_key(&[ex], &keys),
                    });
                }
                OnViolation::Drop => {
                    let idx = arrow::array::UInt32Array::from(
                        failing.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                    );
                    let bad = arrow::compute::take_record_batch(&all, &idx)
                        .map_err(Error::arrow("dropped rows"))?;
                    self.quarantine_rows(&def.name, &e.name, vec![bad], watermark.lake_value())
                        .await?;
                    let keep: BooleanArray = (0..pass.len()).map(|i| Some(pass.value(i))).collect();
                    all = arrow::compute::filter_record_batch(&all, &keep)
                        .map_err(Error::arrow("drop rows"))?;
                }
            }
        }
        Ok(vec![all])
    }
}

/// Whether gold model `def` can be planned against the lake as it is now
/// (nothing runs, nothing is written): `Ok(None)` plans; `Ok(Some(input))`
/// waits for an input that is not in the lake yet; `Err` names what gold
/// cannot run (an unsupported construct, an unknown column, a type error).
pub(crate) async fn plan_against_lake(
    lake: &lake::Lake,
    def: &GoldDef,
    numeric_scale: i8,
) -> Result<Option<String>> {
    let ctx = lake::session();
    lake::ensure_layer_schemas(&ctx)?;
    for u in &def.upstream {
        let Some((layer, name)) = u.split_once('.') else {
            return Err(model_error(&def.name, format!("input {u} names no layer")));
        };
        match lake.open(&lake.refined_url(layer, name)?).await? {
            Some(t) => lake::register(&ctx, u, &t).await?,
            None => return Ok(Some(u.clone())),
        }
    }
    // Physical planning too: some constructs pass the logical planner and
    // are refused only there (a correlated reference it cannot decorrelate).
    crate::pg_sql::plan(&ctx, &def.query, numeric_scale)
        .await
        .map_err(|e| model_error(&def.name, e))?
        .create_physical_plan()
        .await
        .map_err(|e| model_error(&def.name, e))?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const Q: i64 = 7;
    const NOW: i64 = 1_000_000;

    fn recorded(query: i64, inputs: &[i64], refreshed_at_ms: i64) -> Recorded {
        Recorded {
            query: Some(query),
            inputs: inputs.iter().map(|&v| Some(v)).collect(),
            refreshed_at_ms: Some(refreshed_at_ms),
            watermark: None,
        }
    }

    #[test]
    fn unchanged_inputs_and_query_skip_whatever_the_policy() {
        for policy in [
            Refresh::OnChange,
            Refresh::Manual,
            Refresh::Interval(Duration::from_secs(60)),
        ] {
            let r = recorded(Q, &[3, 4], 0);
            assert_eq!(
                skip_refresh(policy, false, Q, &[Some(3), Some(4)], &r, NOW),
                Some(Skip::UpToDate),
                "{policy:?}"
            );
        }
    }

    #[test]
    fn a_forced_refresh_or_a_changed_query_always_recomputes() {
        for policy in [
            Refresh::Manual,
            Refresh::Interval(Duration::from_secs(3600)),
        ] {
            let r = recorded(Q, &[3], NOW);
            assert_eq!(skip_refresh(policy, true, Q, &[Some(3)], &r, NOW), None);
            assert_eq!(
                skip_refresh(policy, false, Q + 1, &[Some(3)], &r, NOW),
                None
            );
        }
        // A table written before the fingerprint existed records none.
        let r = Recorded::default();
        assert_eq!(skip_refresh(Refresh::Manual, false, Q, &[], &r, NOW), None);
    }

    #[test]
    fn moved_inputs_recompute_on_change_wait_for_manual_and_for_the_interval() {
        let moved = [Some(3), Some(5)];
        let r = recorded(Q, &[3, 4], NOW - 30_000);
        assert_eq!(
            skip_refresh(Refresh::OnChange, false, Q, &moved, &r, NOW),
            None
        );
        assert_eq!(
            skip_refresh(Refresh::Manual, false, Q, &moved, &r, NOW),
            Some(Skip::Manual)
        );
        let minute = Refresh::Interval(Duration::from_secs(60));
        assert_eq!(
            skip_refresh(minute, false, Q, &moved, &r, NOW),
            Some(Skip::NotDue),
            "refreshed 30 s ago"
        );
        let r = recorded(Q, &[3, 4], NOW - 60_000);
        assert_eq!(
            skip_refresh(minute, false, Q, &moved, &r, NOW),
            None,
            "60 s ago"
        );
        // An input that appeared or vanished is a move too.
        let r = recorded(Q, &[3], NOW);
        assert_eq!(
            skip_refresh(Refresh::OnChange, false, Q, &[Some(3), None], &r, NOW),
            None
        );
    }
}
