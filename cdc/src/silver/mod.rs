//! Silver: bronze change logs applied to tables people query.
//!
//! ```text
//!  bronze/<schema>/<table>  (snapshot generation S, then changes)
//!      │  rows with S < _mdl_lsn < W, in (LSN, order) order, in slices
//!      ▼
//!  reduce per key ── last change wins, unchanged TOAST keeps its value,
//!      │             SCD2: one version per source transaction
//!      ▼
//!  expectations ──── warn: count · drop: quarantine/<name> · fail: stop
//!      ▼
//!  silver/<name>  one Delta MERGE per slice, txn(medallion:silver:<name>) = slice end
//! ```
//!
//! # Contract
//!
//! A silver table's `txn` version `V` means: it reflects exactly the source
//! transactions with commit LSN `< V` of the bronze generation recorded under
//! `medallion:silver:<name>:generation`. Each MERGE carries its slice's end as
//! the new `V`, in the same commit as the data, so a run killed at any point
//! and rerun reads the same bronze rows again from `V` and produces the same
//! table. A new bronze generation (initial copy, resync, slot recreated) or a
//! changed definition rebuilds the table from that generation's snapshot.
//!
//! Tables:
//! - current state: the source columns, then `_mdl_lsn` and `_mdl_commit_ts`
//!   of the change that wrote the row (and `_mdl_deleted` with `soft_delete`).
//! - SCD2: the source columns, then `_mdl_valid_from`, `_mdl_valid_to`,
//!   `_mdl_valid_from_lsn`, `_mdl_valid_to_lsn`, `_mdl_is_current`.
//!
//! # Where things are
//!
//! - this module: one table's run — the generation check, the rebuild from
//!   a bronze copy, the slices of changes up to the watermark — written
//!   against the two seams of [`store`], and [`Refiner::refresh`], which
//!   wires the Delta tables to it (and keeps, settles and compacts them);
//! - [`store`]: [`store::BronzeLog`] (what the run reads) and
//!   [`store::SilverStore`] (what it writes, with its durability contract),
//!   their Delta implementations and the Delta MERGE of a slice;
//! - [`change_log`]: the reduction of a slice per key (pure Arrow);
//! - [`merge`]: a slice read, reduced and checked, then applied;
//! - `memory` (tests only): both seams in memory, and the unit tests of
//!   the run (rebuild, slices, a failed commit and its rerun, TRUNCATE,
//!   soft delete, SCD2, expectations);
//! - [`crate::expectations`]: the rules and the quarantine, shared with gold;
//! - [`crate::refine`]: the cycle that runs silver and then gold, and the
//!   [`Refiner`] both run on.

mod change_log;
#[cfg(test)]
mod memory;
mod merge;
mod store;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use arrow::array::{BooleanArray, Int64Array};
use arrow::datatypes::Field;
use deltalake::datafusion::prelude::SessionContext;

use crate::app_id::AppId;
use crate::bronze::{self, COL_COMMIT_TS, COL_LSN, COL_OP};
use crate::catalog::{History, OnViolation, SilverDef};
use crate::error::{Error, Result};
use crate::expectations::{RuleCount, count_of, describe_key, rule_error};
use crate::lake::{self, ident};
use crate::lsn::Lsn;
use crate::refine::Refiner;
use store::{BronzeLog, DeltaBronze, DeltaSilver, SilverStore};

pub const COL_DELETED: &str = "_mdl_deleted";

pub const COL_VALID_FROM: &str = "_mdl_valid_from";

pub const COL_VALID_TO: &str = "_mdl_valid_to";

pub const COL_VALID_FROM_LSN: &str = "_mdl_valid_from_lsn";

pub const COL_VALID_TO_LSN: &str = "_mdl_valid_to_lsn";

pub const COL_IS_CURRENT: &str = "_mdl_is_current";

const COL_ACTION: &str = "_mdl_action";

/// What a silver run did.
#[derive(Debug, Clone, Default)]
pub struct SilverReport {
    /// Bronze rows read.
    pub rows_in: u64,
    /// Rows written (inserted, updated or deleted) in silver.
    pub rows_out: u64,
    pub expectations: BTreeMap<String, RuleCount>,
    /// The silver table's Delta version after the run.
    pub version: Option<i64>,
    /// Whether the table changed.
    pub changed: bool,
    /// Why the table cannot reach the watermark yet (not an error).
    pub waiting: Option<String>,
    /// Unchanged TOAST values that neither bronze nor silver held (NULL in silver).
    pub toast_missing: u64,
}

/// How far a run got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Bronze cannot serve the watermark yet (`SilverReport::waiting` says why).
    Waiting,
    /// The table already held everything bronze holds; nothing written.
    UpToDate,
    /// Rebuilt and/or brought forward (`sliced`: changes after the copy
    /// were read, so the table may hold new small files).
    Written { sliced: bool },
}

/// Fingerprint of everything that shapes the table: a change rebuilds it.
fn definition_hash(def: &SilverDef) -> i64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    def.source.hash(&mut h);
    def.keys.hash(&mut h);
    (def.history == History::Scd2).hash(&mut h);
    def.track_columns.hash(&mut h);
    def.soft_delete.hash(&mut h);
    (h.finish() & (i64::MAX as u64)) as i64
}

impl Refiner<'_> {
    /// The position silver table `name` reflects (its `txn` version: every
    /// source transaction below it applied), if it was written.
    pub async fn reflected(&self, name: &str) -> Result<Option<Lsn>> {
        let url = self.lake.refined_url("silver", name)?;
        match self.tables.open(self.lake, &url).await? {
            Some(t) => {
                let v = self
                    .tables
                    .txn_version(&t, &AppId::Silver(name).to_string())
                    .await?;
                Ok(v.map(Lsn::from_lake))
            }
            None => Ok(None),
        }
    }

    /// Bring silver table `def` to watermark `w`: every source transaction
    /// with commit LSN `< w` applied, nothing after.
    pub async fn refresh(&self, def: &SilverDef, w: Lsn) -> Result<SilverReport> {
        let mut report = SilverReport::default();
        let bronze_url = self.lake.bronze_url(&def.source)?;
        let fingerprint = definition_hash(def);
        // When this process is the bronze writer: what proves bronze did not
        // move, read before the log, so a commit racing this run is never
        // taken for seen.
        let settle_key = format!("silver.{}", def.name);
        let proof = bronze::unmoved_proof(self.lake.root(), &bronze_url)
            .map(|[tenure, commits]| vec![tenure, commits, fingerprint]);
        if let Some(p) = &proof
            && let Some(version) = self.tables.settled(&settle_key, p)
        {
            tracing::debug!(silver = %def.name, "up to date: its bronze table has not moved since");
            report.version = version;
            return Ok(report);
        }
        // Bronze is read afresh and not kept: the cycle reads only silver
        // and gold from the cache.
        let Some(bronze) = self.lake.open(&bronze_url).await? else {
            report.waiting = Some(format!("bronze {} not written yet", def.source));
            return Ok(report);
        };
        let bronze = DeltaBronze {
            table: bronze,
            refiner: self,
            source: &def.source,
        };
        let url = self.lake.refined_url("silver", &def.name)?;
        let mut silver = DeltaSilver {
            name: &def.name,
            table: self.tables.open(self.lake, &url).await?,
            url: url.clone(),
            refiner: self,
        };
        let progress = self
            .run(def, w, fingerprint, &bronze, &mut silver, &mut report)
            .await?;
        match progress {
            Progress::Waiting => {}
            Progress::UpToDate => {
                // Everything bronze holds is applied: until the writer
                // commits to bronze again, so is everything below any
                // later watermark.
                if let Some(p) = proof {
                    self.tables.settle(&settle_key, p, report.version);
                }
            }
            Progress::Written { sliced } => {
                let table = silver
                    .table
                    .ok_or_else(|| Error::Protocol("silver table missing".into()))?;
                let layout = sliced.then_some(crate::optimize::Layout {
                    target_bytes: self.silver_file_bytes,
                    cluster_key: def.keys.first().map(String::as_str),
                });
                (_, report.version) = self.keep_written(table, &url, layout).await?;
            }
        }
        Ok(report)
    }

    /// One silver run over any bronze log and silver store (see
    /// [`store`]): the generation check, the rebuild from a bronze copy, the
    /// slices of changes up to `w`.
    pub(crate) async fn run(
        &self,
        def: &SilverDef,
        w: Lsn,
        fingerprint: i64,
        bronze: &impl BronzeLog,
        silver: &mut impl SilverStore,
        report: &mut SilverReport,
    ) -> Result<Progress> {
        // Below, positions are lake values: they are compared with bronze's
        // `_mdl_lsn` column and Delta transaction versions.
        let w = w.lake_value();
        let Some(generation) = bronze.generation().await? else {
            report.waiting = Some(format!("initial copy of {} not committed yet", def.source));
            return Ok(Progress::Waiting);
        };
        if generation >= w {
            report.waiting = Some(format!(
                "the stream has not yet passed the copy of {} at {}",
                def.source,
                Lsn::from_lake(generation)
            ));
            return Ok(Progress::Waiting);
        }
        let recorded = silver.recorded().await?;
        let from = recorded
            .filter(|r| r.generation == Some(generation) && r.definition == Some(fingerprint))
            .and_then(|r| r.applied);
        // Nothing new in bronze since the silver version: done, cheaply.
        if let Some(v) = from {
            let bronze_hi = bronze.stream_position().await?;
            if bronze_hi.is_none_or(|hi| hi < v) {
                report.version = silver.version();
                return Ok(Progress::UpToDate);
            }
        }
        let ctx = lake::session();
        bronze.register(&ctx, "b").await?;
        let data_columns = bronze.data_fields()?;
        for k in &def.keys {
            if !data_columns.iter().any(|f| f.name() == k) {
                return Err(Error::Config(format!(
                    "silver.{}: key column {k} is not in bronze {}",
                    def.name, def.source
                )));
            }
        }
        let from = match from {
            Some(v) => v,
            None => {
                self.write_generation(
                    def,
                    &ctx,
                    &data_columns,
                    generation,
                    fingerprint,
                    silver,
                    report,
                )
                .await?;
                generation + 1
            }
        };
        let sliced = from < w;
        if sliced {
            let source = format!("bronze {}", def.source);
            for (lo, hi) in self.slices(&ctx, &source, from, w).await? {
                crate::fault::pause(crate::fault::BEFORE_SILVER_SLICE).await;
                self.apply_slice(def, &ctx, silver, lo, hi, report).await?;
                crate::fault::hit(crate::fault::MID_SILVER);
            }
        }
        report.version = silver.version();
        Ok(Progress::Written { sliced })
    }

    /// Split `[from, w)` into slices of about `batch_rows` changes, never
    /// splitting a transaction, with every TRUNCATE starting a slice.
    async fn slices(
        &self,
        ctx: &SessionContext,
        bronze: &str,
        from: i64,
        w: i64,
    ) -> Result<Vec<(i64, i64)>> {
        let sql = format!(
            "SELECT {COL_LSN}, count(*), bool_or({COL_OP} = 'truncate') FROM b \
             WHERE {COL_LSN} >= {from} AND {COL_LSN} < {w} AND {COL_OP} <> 'snapshot' \
             GROUP BY 1 ORDER BY 1"
        );
        let mut bounds = Vec::new();
        let mut lo = None;
        let mut acc = 0usize;
        for b in lake::collect(ctx, &sql).await? {
            let lsn = lake::typed_column::<Int64Array>(&b, 0, bronze, "Int64")?;
            let n = lake::typed_column::<Int64Array>(&b, 1, bronze, "Int64")?;
            let t = lake::typed_column::<BooleanArray>(&b, 2, bronze, "Boolean")?;
            for i in 0..b.num_rows() {
                let (l, n, t) = (lsn.value(i), n.value(i) as usize, t.value(i));
                match lo {
                    None => lo = Some(l),
                    Some(start) if (t || acc + n > self.batch_rows) && acc > 0 => {
                        bounds.push((start, l));
                        lo = Some(l);
                        acc = 0;
                    }
                    Some(_) => {}
                }
                acc += n;
            }
        }
        if let Some(start) = lo {
            bounds.push((start, w));
        }
        Ok(bounds)
    }

    /// Overwrite silver with the snapshot rows of bronze generation `generation`.
    #[allow(clippy::too_many_arguments)]
    async fn write_generation(
        &self,
        def: &SilverDef,
        ctx: &SessionContext,
        data_columns: &[Field],
        generation: i64,
        fingerprint: i64,
        silver: &mut impl SilverStore,
        report: &mut SilverReport,
    ) -> Result<()> {
        let cols: Vec<String> = data_columns.iter().map(|f| ident(f.name())).collect();
        let meta = match (def.history, def.soft_delete) {
            (History::Current, false) => format!("{COL_LSN}, {COL_COMMIT_TS}"),
            (History::Current, true) => format!(
                "{COL_LSN}, {COL_COMMIT_TS}, CASE WHEN true THEN false END AS {COL_DELETED}"
            ),
            (History::Scd2, _) => format!(
                "{COL_COMMIT_TS} AS {COL_VALID_FROM}, CASE WHEN false THEN {COL_COMMIT_TS} END AS {COL_VALID_TO}, \
                 CASE WHEN true THEN {COL_LSN} END AS {COL_VALID_FROM_LSN}, \
                 CASE WHEN false THEN {COL_LSN} END AS {COL_VALID_TO_LSN}, \
                 CASE WHEN true THEN true END AS {COL_IS_CURRENT}"
            ),
        };
        let rows = format!("FROM b WHERE {COL_OP} = 'snapshot' AND {COL_LSN} = {generation}");
        let select = format!("SELECT {}, {meta} {rows}", cols.join(", "));
        let (filter, counts) = self
            .check_generation(def, ctx, &rows, &cols, generation)
            .await?;
        report.expectations.extend(counts);
        let n = count_of(&lake::collect(ctx, &format!("SELECT count(*) {rows}")).await?)?;
        report.rows_in += n;
        // The generation's rows are silver's rows: all, or those that pass
        // every `drop` rule.
        report.rows_out += match &filter {
            Some(f) => {
                count_of(&lake::collect(ctx, &format!("SELECT count(*) {rows} AND {f}")).await?)?
            }
            None => n,
        };
        let sql = match filter {
            Some(f) => format!("{select} AND {f}"),
            None => select,
        };
        let df = ctx
            .sql(&sql)
            .await
            .map_err(Error::datafusion(format!("silver.{} generation", def.name)))?;
        let (_, plan) = df.into_parts();
        silver
            .rebuild(def, ctx, plan, generation, fingerprint)
            .await?;
        report.changed = true;
        tracing::info!(silver = %def.name, generation = %Lsn::from_lake(generation), "silver rebuilt from the bronze copy");
        Ok(())
    }

    /// Expectations over a snapshot generation: counts, quarantine, fail.
    /// Returns the filter that keeps rows passing every `drop` rule.
    async fn check_generation(
        &self,
        def: &SilverDef,
        ctx: &SessionContext,
        rows: &str,
        cols: &[String],
        generation: i64,
    ) -> Result<(Option<String>, BTreeMap<String, RuleCount>)> {
        let mut counts = BTreeMap::new();
        let mut keep = Vec::new();
        for e in &def.expectations {
            let pass = format!("coalesce(({}), true)", e.predicate);
            let failed = lake::collect(ctx, &format!("SELECT count(*) {rows} AND NOT {pass}"))
                .await
                .map_err(|err| rule_error(&def.name, e, err))?;
            let failed = count_of(&failed)?;
            counts.insert(
                e.name.clone(),
                RuleCount {
                    on_violation: e.on_violation.as_str(),
                    failed,
                },
            );
            if failed == 0 {
                continue;
            }
            match e.on_violation {
                OnViolation::Warn => {}
                OnViolation::Fail => {
                    let keys: Vec<String> = def.keys.iter().map(|k| ident(k)).collect();
                    let ex = lake::collect(
                        ctx,
                        &format!("SELECT {} {rows} AND NOT {pass} LIMIT 1", keys.join(", ")),
                    )
                    .await?;
                    return Err(Error::Expectation {
                        target: format!("silver.{}", def.name),
                        rule: e.name.clone(),
                        failed,
                        example: describe_key(&ex, &def.keys),
                    });
                }
                OnViolation::Drop => {
                    let bad = lake::collect(
                        ctx,
                        &format!(
                            "SELECT {}, {COL_LSN}, {COL_COMMIT_TS} {rows} AND NOT {pass}",
                            cols.join(", ")
                        ),
                    )
                    .await?;
                    self.quarantine_rows(&def.name, &e.name, bad, generation)
                        .await?;
                    keep.push(pass);
                }
            }
        }
        Ok(((!keep.is_empty()).then(|| keep.join(" AND ")), counts))
    }
}
