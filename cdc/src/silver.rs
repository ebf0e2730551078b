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

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray, RecordBatch, StringArray,
    TimestampMicrosecondArray, new_null_array,
};
use arrow::compute::interleave;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::row::{OwnedRow, RowConverter, SortField};
use deltalake::DeltaTable;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use url::Url;

use crate::app_id::AppId;
use crate::bronze::{self, COL_COMMIT_TS, COL_LSN, COL_OP, COL_UNCHANGED_TOAST, META_PREFIX};
use crate::catalog::{Expectation, History, OnViolation, SilverDef};
use crate::error::{Error, Result};
use crate::lake::{self, ident};

pub const COL_DELETED: &str = "_mdl_deleted";
pub const COL_VALID_FROM: &str = "_mdl_valid_from";
pub const COL_VALID_TO: &str = "_mdl_valid_to";
pub const COL_VALID_FROM_LSN: &str = "_mdl_valid_from_lsn";
pub const COL_VALID_TO_LSN: &str = "_mdl_valid_to_lsn";
pub const COL_IS_CURRENT: &str = "_mdl_is_current";
const COL_ACTION: &str = "_mdl_action";
const COL_RULE: &str = "_mdl_rule";

/// Where silver runs read and write.
pub struct Refiner<'a> {
    pub lake: &'a Url,
    pub storage: &'a HashMap<String, String>,
    pub slot: &'a str,
    /// Changes applied per MERGE (bounds memory; one transaction is never split).
    pub batch_rows: usize,
    /// Scale of unconstrained `numeric` (`MEDALLION_NUMERIC_SCALE`): gold
    /// reads a bare `::numeric` with it, as silver stores such columns.
    pub numeric_scale: i8,
    /// Compact a table this refiner wrote once this many of its files are
    /// small (`MEDALLION_COMPACT_SMALL_FILES`; 0 never).
    pub compact_small_files: usize,
    /// Delta tables kept open between cycles.
    pub tables: &'a lake::TableCache,
}

/// Violations of one expectation in one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RuleCount {
    pub on_violation: &'static str,
    pub failed: u64,
}

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

fn lsn_text(lsn: i64) -> String {
    pg_walstream::format_lsn(lsn as u64)
}

impl<'a> Refiner<'a> {
    /// The refiner `cfg` describes, over its lake root and storage options.
    pub fn new(
        cfg: &'a crate::Config,
        lake: &'a Url,
        storage: &'a HashMap<String, String>,
        tables: &'a lake::TableCache,
    ) -> Self {
        Refiner {
            lake,
            storage,
            slot: &cfg.slot,
            batch_rows: cfg.silver_batch_rows.max(1),
            numeric_scale: cfg.numeric_scale,
            compact_small_files: cfg.compact_small_files,
            tables,
        }
    }

    /// The position silver table `name` reflects (its `txn` version: every
    /// source transaction below it applied), if it was written.
    pub async fn reflected(&self, name: &str) -> Result<Option<i64>> {
        let url = lake::refined_url(self.lake, "silver", name)?;
        match self.tables.open(&url, self.storage).await? {
            Some(t) => {
                self.tables
                    .txn_version(&t, &AppId::Silver(name).to_string())
                    .await
            }
            None => Ok(None),
        }
    }

    /// Bring silver table `def` to watermark `w`: every source transaction
    /// with commit LSN `< w` applied, nothing after.
    pub async fn refresh(&self, def: &SilverDef, w: i64) -> Result<SilverReport> {
        let mut report = SilverReport::default();
        let bronze_url = bronze::table_url(self.lake, &def.source)?;
        let fingerprint = definition_hash(def);
        // When this process is the bronze writer: what proves bronze did not
        // move, read before the log, so a commit racing this run is never
        // taken for seen.
        let settle_key = format!("silver.{}", def.name);
        let proof = bronze::unmoved_proof(&bronze_url)
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
        let Some(bronze) = lake::open(&bronze_url, self.storage).await? else {
            report.waiting = Some(format!("bronze {} not written yet", def.source));
            return Ok(report);
        };
        let Some(generation) = self
            .tables
            .txn_version(
                &bronze,
                &AppId::Snapshot {
                    slot: self.slot,
                    table: &def.source,
                }
                .to_string(),
            )
            .await?
        else {
            report.waiting = Some(format!("initial copy of {} not committed yet", def.source));
            return Ok(report);
        };
        if generation >= w {
            report.waiting = Some(format!(
                "the stream has not yet passed the copy of {} at {}",
                def.source,
                lsn_text(generation)
            ));
            return Ok(report);
        }
        let url = lake::refined_url(self.lake, "silver", &def.name)?;
        let app = AppId::Silver(&def.name).to_string();
        let mut silver = self.tables.open(&url, self.storage).await?;
        let mut from = None;
        if let Some(t) = &silver {
            let same_generation = self
                .tables
                .txn_version(t, &AppId::SilverGeneration(&def.name).to_string())
                .await?
                == Some(generation);
            let same_definition = self
                .tables
                .txn_version(t, &AppId::SilverDefinition(&def.name).to_string())
                .await?
                == Some(fingerprint);
            if same_generation && same_definition {
                from = self.tables.txn_version(t, &app).await?;
            }
        }
        // Nothing new in bronze since the silver version: done, cheaply.
        if let (Some(v), Some(t)) = (from, &silver) {
            let bronze_hi = self
                .tables
                .txn_version(
                    &bronze,
                    &AppId::Stream {
                        slot: self.slot,
                        table: &def.source,
                    }
                    .to_string(),
                )
                .await?;
            if bronze_hi.is_none_or(|hi| hi < v) {
                report.version = t.version().map(|v| v as i64);
                // Everything bronze holds is applied: until the writer
                // commits to bronze again, so is everything below any
                // later watermark.
                if let Some(p) = proof {
                    self.tables.settle(&settle_key, p, report.version);
                }
                return Ok(report);
            }
        }
        let ctx = lake::session();
        lake::register(&ctx, "b", &bronze).await?;
        let data_columns: Vec<Field> = bronze
            .snapshot()
            .map_err(Error::delta("bronze snapshot"))?
            .snapshot()
            .arrow_schema()
            .fields()
            .iter()
            .filter(|f| !f.name().starts_with(META_PREFIX))
            .map(|f| f.as_ref().clone())
            .collect();
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
                let t = self
                    .write_generation(
                        def,
                        &ctx,
                        &data_columns,
                        generation,
                        &url,
                        fingerprint,
                        &mut report,
                    )
                    .await?;
                silver = Some(t);
                generation + 1
            }
        };
        let mut silver = silver.ok_or_else(|| Error::Protocol("silver table missing".into()))?;
        if from < w {
            let bronze = format!("bronze {}", def.source);
            for (lo, hi) in self.slices(&ctx, &bronze, from, w).await? {
                silver = self
                    .apply_slice(def, &ctx, silver, lo, hi, &mut report)
                    .await?;
                crate::fault::hit(crate::fault::MID_SILVER);
            }
            // Every MERGE adds files; compact between our own commits.
            crate::optimize::compact_refined(
                &mut silver,
                &url,
                self.storage,
                self.compact_small_files,
            )
            .await?;
        }
        self.tables.remember(&url, &silver);
        report.version = silver.version().map(|v| v as i64);
        Ok(report)
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
        url: &Url,
        fingerprint: i64,
        report: &mut SilverReport,
    ) -> Result<DeltaTable> {
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
        let sql = match filter {
            Some(f) => format!("{select} AND {f}"),
            None => select,
        };
        let n = lake::collect(ctx, &format!("SELECT count(*) {rows}")).await?;
        report.rows_in += count_of(&n)?;
        let df = ctx
            .sql(&sql)
            .await
            .map_err(Error::datafusion(format!("silver.{} generation", def.name)))?;
        let (_, plan) = df.into_parts();
        let app = AppId::Silver(&def.name).to_string();
        let table = lake::handle(url, self.storage)?
            .write(Vec::<RecordBatch>::new())
            .with_input_plan(plan)
            .with_session_state(Arc::new(ctx.state()))
            .with_save_mode(SaveMode::Overwrite)
            .with_schema_mode(SchemaMode::Overwrite)
            .with_table_name(format!("silver_{}", def.name))
            .with_description(format!(
                "medallion silver {} of {} ({})",
                def.name,
                def.source,
                if def.history == History::Scd2 {
                    "SCD2 history"
                } else {
                    "current state"
                }
            ))
            .with_commit_properties(lake::commit_properties(
                vec![
                    (app.clone(), generation + 1),
                    (AppId::SilverGeneration(&def.name).to_string(), generation),
                    (AppId::SilverDefinition(&def.name).to_string(), fingerprint),
                ],
                vec![
                    ("medallion.kind", "silver_generation".into()),
                    ("medallion.lsn", lsn_text(generation + 1).into()),
                ],
            ))
            .await
            .map_err(Error::delta(format!("write silver.{}", def.name)))?;
        report.changed = true;
        tracing::info!(silver = %def.name, generation = %lsn_text(generation), "silver rebuilt from the bronze copy");
        Ok(table)
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

    /// Append rows an expectation dropped to `quarantine/<name>`, once per
    /// (rule, slice): a rerun after a crash does not add them twice.
    pub(crate) async fn quarantine_rows(
        &self,
        name: &str,
        rule: &str,
        batches: Vec<RecordBatch>,
        at: i64,
    ) -> Result<()> {
        let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        if batches.is_empty() {
            return Ok(());
        }
        let url = lake::refined_url(self.lake, "quarantine", name)?;
        let app = AppId::Quarantine { table: name, rule }.to_string();
        let existing = lake::open(&url, self.storage).await?;
        if let Some(t) = &existing
            && self
                .tables
                .txn_version(t, &app)
                .await?
                .is_some_and(|v| v >= at)
        {
            return Ok(());
        }
        let mut out = Vec::new();
        for b in batches {
            let mut fields: Vec<Arc<Field>> = b.schema().fields().iter().cloned().collect();
            let mut columns = b.columns().to_vec();
            fields.push(Arc::new(Field::new(COL_RULE, DataType::Utf8, false)));
            columns.push(Arc::new(StringArray::from(vec![rule; b.num_rows()])));
            out.push(
                RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
                    .map_err(Error::arrow("quarantine batch"))?,
            );
        }
        let table = match existing {
            Some(t) => t,
            None => lake::handle(&url, self.storage)?,
        };
        table
            .write(out)
            .with_save_mode(SaveMode::Append)
            .with_schema_mode(SchemaMode::Merge)
            .with_commit_properties(lake::commit_properties(
                vec![(app, at)],
                vec![
                    ("medallion.kind", "quarantine".into()),
                    ("medallion.rule", rule.into()),
                ],
            ))
            .await
            .map_err(Error::delta(format!("write quarantine/{name}")))?;
        Ok(())
    }

    /// Read one slice of changes, reduce, check and MERGE it.
    async fn apply_slice(
        &self,
        def: &SilverDef,
        ctx: &SessionContext,
        silver: DeltaTable,
        lo: i64,
        hi: i64,
        report: &mut SilverReport,
    ) -> Result<DeltaTable> {
        let sql = format!(
            "SELECT * FROM b WHERE {COL_LSN} >= {lo} AND {COL_LSN} < {hi} AND {COL_OP} <> 'snapshot' \
             ORDER BY {COL_LSN}, {}",
            bronze::COL_SEQ
        );
        let batches = lake::collect(ctx, &sql).await?;
        let schema = match batches.first() {
            Some(b) => b.schema(),
            None => return Ok(silver),
        };
        let changes = arrow::compute::concat_batches(&schema, &batches)
            .map_err(Error::arrow("concat changes"))?;
        drop(batches);
        report.rows_in += changes.num_rows() as u64;
        let log = ChangeLog::new(&changes, &def.keys, &format!("bronze {}", def.source))?;
        let lookup = if log.needs_lookup(def) {
            Some(self.lookup(def, &silver, &log).await?)
        } else {
            None
        };
        let (source, truncated) = match def.history {
            History::Current => log.reduce_current(def, lookup.as_ref())?,
            History::Scd2 => log.reduce_scd2(def, lookup.as_ref())?,
        };
        report.toast_missing += log.toast_missing.load(std::sync::atomic::Ordering::Relaxed);
        let source = self.check_slice(def, ctx, source, hi, report).await?;
        report.rows_out += source.num_rows() as u64;
        let app = AppId::Silver(&def.name).to_string();
        let props = lake::commit_properties(
            vec![(app, hi)],
            vec![
                ("medallion.kind", "silver".into()),
                ("medallion.lsn", lsn_text(hi).into()),
                ("medallion.changes", (changes.num_rows() as u64).into()),
            ],
        );
        let mut silver = silver;
        if let Some((t_lsn, t_ts)) = truncated {
            match (def.history, def.soft_delete) {
                (History::Current, false) => {
                    // Everything before the TRUNCATE is gone: the new state is
                    // exactly the rows written after it.
                    let upserts = filter_action(&source, "upsert")?;
                    let table = silver
                        .write(vec![drop_column(&upserts, COL_ACTION)?])
                        .with_save_mode(SaveMode::Overwrite)
                        .with_schema_mode(SchemaMode::Merge)
                        .with_commit_properties(props)
                        .await
                        .map_err(Error::delta(format!("write silver.{}", def.name)))?;
                    report.changed = true;
                    return Ok(table);
                }
                (History::Current, true) => {
                    let (t, _) = silver
                        .update()
                        .with_predicate(format!("{COL_DELETED} = false"))
                        .with_update(COL_DELETED, "true")
                        .with_update(COL_LSN, t_lsn.to_string())
                        .await
                        .map_err(Error::delta(format!("truncate silver.{}", def.name)))?;
                    silver = t;
                }
                (History::Scd2, _) => {
                    let ts = match t_ts {
                        Some(us) => format!(
                            "arrow_cast(to_timestamp_micros({us}), 'Timestamp(Microsecond, Some(\"UTC\"))')"
                        ),
                        None => "NULL".into(),
                    };
                    let (t, _) = silver
                        .update()
                        .with_predicate(format!("{COL_IS_CURRENT} = true"))
                        .with_update(COL_IS_CURRENT, "false")
                        .with_update(COL_VALID_TO_LSN, t_lsn.to_string())
                        .with_update(COL_VALID_TO, ts)
                        .await
                        .map_err(Error::delta(format!("truncate silver.{}", def.name)))?;
                    silver = t;
                }
            }
        }
        if source.num_rows() == 0 {
            // Still record that the slice was applied.
            let (t, _) = silver
                .write(Vec::<RecordBatch>::new())
                .with_save_mode(SaveMode::Append)
                .with_commit_properties(props)
                .await
                .map_err(Error::delta(format!("write silver.{}", def.name)))
                .map(|t| (t, ()))?;
            return Ok(t);
        }
        silver = add_new_columns(silver, &log.data_fields, &def.name).await?;
        let data: Vec<String> = log.data_fields.iter().map(|f| f.name().clone()).collect();
        let df = ctx
            .read_batch(source)
            .map_err(Error::datafusion("merge source"))?;
        let on: Vec<String> = match def.history {
            History::Current => def
                .keys
                .iter()
                .map(|k| format!("t.{} = s.{}", ident(k), ident(k)))
                .collect(),
            History::Scd2 => def
                .keys
                .iter()
                .enumerate()
                .map(|(i, k)| format!("t.{} = s._mdl_mk_{i}", ident(k)))
                .chain(std::iter::once(format!("t.{COL_IS_CURRENT} = true")))
                .collect(),
        };
        let mut merge = silver
            .merge(df, on.join(" AND "))
            .with_source_alias("s")
            .with_target_alias("t")
            .with_session_state(Arc::new(ctx.state()))
            .with_commit_properties(props);
        let set_data = |mut u: deltalake::operations::merge::UpdateBuilder, meta: &[&str]| {
            for c in data.iter().map(String::as_str).chain(meta.iter().copied()) {
                u = u.update(c, format!("s.{}", ident(c)));
            }
            u
        };
        let err = |e| Error::delta(format!("merge silver.{}", def.name))(e);
        match def.history {
            History::Current => {
                if def.soft_delete {
                    merge = merge
                        .when_matched_update(|u| {
                            u.predicate(format!("s.{COL_ACTION} = 'delete'"))
                                .update(COL_DELETED, "true")
                                .update(COL_LSN, format!("s.{COL_LSN}"))
                                .update(COL_COMMIT_TS, format!("s.{COL_COMMIT_TS}"))
                        })
                        .map_err(err)?;
                } else {
                    merge = merge
                        .when_matched_delete(|d| d.predicate(format!("s.{COL_ACTION} = 'delete'")))
                        .map_err(err)?;
                }
                let meta: Vec<&str> = if def.soft_delete {
                    vec![COL_LSN, COL_COMMIT_TS, COL_DELETED]
                } else {
                    vec![COL_LSN, COL_COMMIT_TS]
                };
                merge = merge
                    .when_matched_update(|u| {
                        set_data(u.predicate(format!("s.{COL_ACTION} = 'upsert'")), &meta)
                    })
                    .map_err(err)?
                    .when_not_matched_insert(|mut i| {
                        i = i.predicate(format!("s.{COL_ACTION} = 'upsert'"));
                        for c in data.iter().map(String::as_str).chain(meta.iter().copied()) {
                            i = i.set(c, format!("s.{}", ident(c)));
                        }
                        i
                    })
                    .map_err(err)?;
            }
            History::Scd2 => {
                let close = [COL_VALID_TO, COL_VALID_TO_LSN, COL_IS_CURRENT];
                let all = [
                    COL_VALID_FROM,
                    COL_VALID_TO,
                    COL_VALID_FROM_LSN,
                    COL_VALID_TO_LSN,
                    COL_IS_CURRENT,
                ];
                merge = merge
                    .when_matched_update(|mut u| {
                        u = u.predicate(format!("s.{COL_ACTION} = 'close'"));
                        for c in close {
                            u = u.update(c, format!("s.{c}"));
                        }
                        u
                    })
                    .map_err(err)?
                    .when_matched_update(|u| {
                        set_data(
                            u.predicate(format!("s.{COL_ACTION} = 'close_replace'")),
                            &close,
                        )
                    })
                    .map_err(err)?
                    .when_matched_update(|u| {
                        set_data(u.predicate(format!("s.{COL_ACTION} = 'replace'")), &[])
                    })
                    .map_err(err)?
                    .when_not_matched_insert(|mut i| {
                        i = i.predicate(format!("s.{COL_ACTION} = 'insert'"));
                        for c in data.iter().map(String::as_str).chain(all) {
                            i = i.set(c, format!("s.{}", ident(c)));
                        }
                        i
                    })
                    .map_err(err)?;
            }
        }
        let (table, _metrics) = merge.await.map_err(err)?;
        report.changed = true;
        Ok(table)
    }

    /// Current silver rows of the keys a slice touches.
    async fn lookup(
        &self,
        def: &SilverDef,
        silver: &DeltaTable,
        log: &ChangeLog<'_>,
    ) -> Result<Lookup> {
        let keys = log.touched_keys()?;
        let ctx = lake::session();
        lake::register(&ctx, "t", silver).await?;
        ctx.register_batch("k", keys)
            .map_err(Error::datafusion("lookup keys"))?;
        let on: Vec<String> = def
            .keys
            .iter()
            .map(|k| format!("t.{} = k.{}", ident(k), ident(k)))
            .collect();
        let current = match (def.history, def.soft_delete) {
            (History::Scd2, _) => format!(" WHERE t.{COL_IS_CURRENT}"),
            (History::Current, true) => format!(" WHERE NOT t.{COL_DELETED}"),
            _ => String::new(),
        };
        let sql = format!("SELECT t.* FROM t JOIN k ON {}{current}", on.join(" AND "));
        let batches = lake::collect(&ctx, &sql).await?;
        let schema = silver
            .snapshot()
            .map_err(Error::delta("silver snapshot"))?
            .snapshot()
            .arrow_schema();
        let batch = match batches.first() {
            Some(b) => arrow::compute::concat_batches(&b.schema(), &batches)
                .map_err(Error::arrow("lookup rows"))?,
            None => RecordBatch::new_empty(schema),
        };
        Lookup::new(batch, &def.keys, &log.data_fields)
    }

    /// Expectations over the rows a slice writes: count, quarantine, fail.
    async fn check_slice(
        &self,
        def: &SilverDef,
        ctx: &SessionContext,
        source: RecordBatch,
        at: i64,
        report: &mut SilverReport,
    ) -> Result<RecordBatch> {
        if def.expectations.is_empty() || source.num_rows() == 0 {
            return Ok(source);
        }
        let written = written_rows(&source)?;
        let mut source = source;
        for e in &def.expectations {
            let pass = evaluate_predicate(ctx, &source, &e.predicate)
                .await
                .map_err(|err| rule_error(&def.name, e, err))?;
            let failing: Vec<usize> = (0..source.num_rows())
                .filter(|&i| written.value(i) && !pass.value(i))
                .collect();
            let count = report
                .expectations
                .entry(e.name.clone())
                .or_insert(RuleCount {
                    on_violation: e.on_violation.as_str(),
                    failed: 0,
                });
            count.failed += failing.len() as u64;
            if failing.is_empty() {
                continue;
            }
            match e.on_violation {
                OnViolation::Warn => {}
                OnViolation::Fail => {
                    let ex = take_rows(&source, &failing[..1])?;
                    return Err(Error::Expectation {
                        target: format!("silver.{}", def.name),
                        rule: e.name.clone(),
                        failed: failing.len() as u64,
                        example: describe_key(&[ex], &def.keys),
                    });
                }
                OnViolation::Drop => {
                    let bad = take_rows(&source, &failing)?;
                    let bad = project_out(&bad, |n| {
                        n.starts_with(META_PREFIX)
                            && n != COL_LSN
                            && n != COL_COMMIT_TS
                            && n != COL_VALID_FROM_LSN
                            && n != COL_VALID_FROM
                    })?;
                    self.quarantine_rows(&def.name, &e.name, vec![bad], at)
                        .await?;
                    source = drop_rows(&source, &failing, def.history)?;
                }
            }
        }
        Ok(source)
    }
}

fn rule_error(name: &str, e: &Expectation, err: Error) -> Error {
    Error::Config(format!(
        "silver.{name}: expectation \"{}\" ({}) cannot be evaluated: {err}",
        e.name, e.predicate
    ))
}

pub(crate) fn count_of(batches: &[RecordBatch]) -> Result<u64> {
    match batches.iter().find(|b| b.num_rows() > 0) {
        Some(b) => Ok(lake::typed_column::<Int64Array>(b, 0, "count(*)", "Int64")?.value(0) as u64),
        None => Ok(0),
    }
}

/// `k=v, …` of the first row, for messages.
pub(crate) fn describe_key(batches: &[RecordBatch], keys: &[String]) -> String {
    let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
        return "(no row)".into();
    };
    keys.iter()
        .map(|k| {
            let v = b
                .schema()
                .index_of(k)
                .ok()
                .map(|i| {
                    arrow::util::display::array_value_to_string(b.column(i), 0)
                        .unwrap_or_else(|_| "?".into())
                })
                .unwrap_or_else(|| "?".into());
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Evaluate a predicate per row (NULL counts as passing, as a CHECK constraint).
pub(crate) async fn evaluate_predicate(
    ctx: &SessionContext,
    batch: &RecordBatch,
    predicate: &str,
) -> Result<BooleanArray> {
    use deltalake::datafusion::functions::core::expr_fn::coalesce;
    use deltalake::datafusion::prelude::lit;
    let df = ctx
        .read_batch(batch.clone())
        .map_err(Error::datafusion("expectation input"))?;
    let expr = df
        .parse_sql_expr(predicate)
        .map_err(Error::datafusion(format!("parse {predicate}")))?;
    let out = df
        .select(vec![coalesce(vec![expr, lit(true)]).alias("ok")])
        .map_err(Error::datafusion(format!("plan {predicate}")))?
        .collect()
        .await
        .map_err(Error::datafusion(format!("evaluate {predicate}")))?;
    let arrays: Vec<ArrayRef> = out.iter().map(|b| b.column(0).clone()).collect();
    let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
    let all = if refs.is_empty() {
        Arc::new(BooleanArray::from(Vec::<bool>::new())) as ArrayRef
    } else {
        arrow::compute::concat(&refs).map_err(Error::arrow("expectation result"))?
    };
    let all = arrow::compute::cast(&all, &DataType::Boolean)
        .map_err(Error::arrow("expectation result"))?;
    // An aggregate (`count(*) > 0`) or a set-returning function gives
    // another number of values than rows: refuse it instead of reading past
    // the end or judging the wrong rows.
    if all.len() != batch.num_rows() {
        return Err(Error::Config(format!(
            "{predicate:?} gives {} values for {} rows: an expectation is a condition on each \
             row (no aggregate, window or set-returning function); fix it with \
             medallion.expect(...)",
            all.len(),
            batch.num_rows()
        )));
    }
    Ok(all.as_boolean().clone())
}

/// Rows of a merge source that write data (not closes or deletes).
fn written_rows(source: &RecordBatch) -> Result<BooleanArray> {
    let action = source
        .column_by_name(COL_ACTION)
        .ok_or_else(|| Error::Protocol("merge source without action".into()))?
        .as_string::<i32>();
    Ok((0..action.len())
        .map(|i| {
            Some(matches!(
                action.value(i),
                "upsert" | "insert" | "replace" | "close_replace"
            ))
        })
        .collect())
}

fn take_rows(batch: &RecordBatch, rows: &[usize]) -> Result<RecordBatch> {
    let idx = arrow::array::UInt32Array::from(rows.iter().map(|&r| r as u32).collect::<Vec<_>>());
    arrow::compute::take_record_batch(batch, &idx).map_err(Error::arrow("take rows"))
}

fn project_out(batch: &RecordBatch, drop: impl Fn(&str) -> bool) -> Result<RecordBatch> {
    let keep: Vec<usize> = (0..batch.num_columns())
        .filter(|&i| !drop(batch.schema().field(i).name()))
        .collect();
    batch.project(&keep).map_err(Error::arrow("project"))
}

fn drop_column(batch: &RecordBatch, name: &str) -> Result<RecordBatch> {
    project_out(batch, |n| n == name)
}

fn filter_action(batch: &RecordBatch, action: &str) -> Result<RecordBatch> {
    let a = batch
        .column_by_name(COL_ACTION)
        .ok_or_else(|| Error::Protocol("merge source without action".into()))?
        .as_string::<i32>();
    let mask: BooleanArray = (0..a.len()).map(|i| Some(a.value(i) == action)).collect();
    arrow::compute::filter_record_batch(batch, &mask).map_err(Error::arrow("filter"))
}

/// Rows dropped by an expectation: current state deletes the key (the row is
/// not valid any more), SCD2 leaves the version out.
fn drop_rows(source: &RecordBatch, rows: &[usize], history: History) -> Result<RecordBatch> {
    let idx = source
        .schema()
        .index_of(COL_ACTION)
        .map_err(Error::arrow("action column"))?;
    let action = source.column(idx).as_string::<i32>();
    let dropped: std::collections::HashSet<usize> = rows.iter().copied().collect();
    match history {
        History::Current => {
            let new: StringArray = (0..action.len())
                .map(|i| {
                    Some(if dropped.contains(&i) {
                        "delete"
                    } else {
                        action.value(i)
                    })
                })
                .collect();
            let mut cols = source.columns().to_vec();
            cols[idx] = Arc::new(new);
            RecordBatch::try_new(source.schema(), cols).map_err(Error::arrow("drop rows"))
        }
        History::Scd2 => {
            let mask: BooleanArray = (0..action.len())
                .map(|i| {
                    Some(!(matches!(action.value(i), "insert" | "replace") && dropped.contains(&i)))
                })
                .collect();
            let mut out = arrow::compute::filter_record_batch(source, &mask)
                .map_err(Error::arrow("drop rows"))?;
            // A dropped close_replace still closes, without the new values.
            let a = out.column(idx).as_string::<i32>();
            if (0..a.len()).any(|i| a.value(i) == "close_replace") {
                let kept: Vec<usize> = (0..action.len()).filter(|&i| mask.value(i)).collect();
                let fixed: StringArray = kept
                    .iter()
                    .map(|&orig| {
                        Some(
                            if dropped.contains(&orig) && action.value(orig) == "close_replace" {
                                "close"
                            } else {
                                action.value(orig)
                            },
                        )
                    })
                    .collect();
                let mut cols = out.columns().to_vec();
                cols[idx] = Arc::new(fixed);
                out =
                    RecordBatch::try_new(out.schema(), cols).map_err(Error::arrow("drop rows"))?;
            }
            Ok(out)
        }
    }
}

/// Where a column value of an output row comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    /// A row of the change slice.
    Change(usize),
    /// A row of the silver lookup.
    Silver(usize),
    /// Nobody has it (unchanged TOAST never seen): NULL.
    Missing,
    /// Not known yet: resolve from the silver lookup.
    Unresolved,
}

/// Silver rows of touched keys, by key.
struct Lookup {
    batch: RecordBatch,
    rows: HashMap<OwnedRow, usize>,
    /// Data column index (slice order) → lookup column index.
    columns: Vec<Option<usize>>,
}

impl Lookup {
    fn new(batch: RecordBatch, keys: &[String], data: &[Field]) -> Result<Lookup> {
        let key_cols: Vec<ArrayRef> = keys
            .iter()
            .map(|k| {
                batch
                    .column_by_name(k)
                    .cloned()
                    .ok_or_else(|| Error::Protocol(format!("silver lacks key column {k}")))
            })
            .collect::<Result<_>>()?;
        let map = key_rows(&key_cols)?
            .into_iter()
            .enumerate()
            .map(|(i, k)| (k, i))
            .collect();
        let columns = data
            .iter()
            .map(|f| {
                batch
                    .schema()
                    .index_of(f.name())
                    .ok()
                    .filter(|&i| batch.column(i).data_type() == f.data_type())
            })
            .collect();
        Ok(Lookup {
            batch,
            rows: map,
            columns,
        })
    }
}

/// A slice of bronze changes in (LSN, order) order.
struct ChangeLog<'a> {
    batch: &'a RecordBatch,
    data_fields: Vec<Field>,
    data_idx: Vec<usize>,
    keys: Vec<OwnedRow>,
    key_idx: Vec<usize>,
    op: &'a StringArray,
    lsn: &'a Int64Array,
    ts: Option<&'a TimestampMicrosecondArray>,
    /// Per row: data column indexes whose TOAST value was not sent.
    unchanged: Vec<Vec<usize>>,
    toast_missing: std::sync::atomic::AtomicU64,
}

/// What happens to a key's current silver row (SCD2).
#[derive(Debug, Clone)]
enum Prior {
    /// Untouched.
    Keep,
    /// Close at (lsn, ts); `replace` also rewrites its values first.
    Close {
        lsn: i64,
        ts: Option<i64>,
        replace: Option<Vec<Src>>,
        row: usize,
    },
    /// Rewrite values in place (only untracked columns changed).
    Replace { srcs: Vec<Src> },
}

struct Version {
    srcs: Vec<Src>,
    lsn: i64,
    ts: Option<i64>,
    to: Option<(i64, Option<i64>)>,
}

struct KeyHistory {
    /// The key's first row in the slice (for its key values).
    first_row: usize,
    prior: Prior,
    /// Whether the current silver row is gone (TRUNCATE) or unknown to exist.
    prior_gone: bool,
    versions: Vec<Version>,
    open: bool,
}

impl KeyHistory {
    /// Close the current silver version at (lsn, ts), keeping in-place
    /// changes made to it earlier in the slice.
    fn close_prior(&mut self, lsn: i64, ts: Option<i64>, row: usize) {
        let replace = match &self.prior {
            Prior::Replace { srcs } => Some(srcs.clone()),
            _ => None,
        };
        self.prior = Prior::Close {
            lsn,
            ts,
            replace,
            row,
        };
    }
}

impl<'a> ChangeLog<'a> {
    fn new(batch: &'a RecordBatch, keys: &[String], table: &str) -> Result<ChangeLog<'a>> {
        let schema = batch.schema();
        let op = lake::named_column::<StringArray>(batch, COL_OP, table, "Utf8")?;
        let lsn = lake::named_column::<Int64Array>(batch, COL_LSN, table, "Int64")?;
        let ts = match schema.index_of(COL_COMMIT_TS) {
            Ok(i) => Some(lake::typed_column::<TimestampMicrosecondArray>(
                batch,
                i,
                table,
                "Timestamp(µs, UTC)",
            )?),
            Err(_) => None,
        };
        let mut data_fields = Vec::new();
        let mut data_idx = Vec::new();
        for (i, f) in schema.fields().iter().enumerate() {
            if !f.name().starts_with(META_PREFIX) {
                data_fields.push(f.as_ref().clone());
                data_idx.push(i);
            }
        }
        let key_idx: Vec<usize> = keys
            .iter()
            .map(|k| {
                data_fields
                    .iter()
                    .position(|f| f.name() == k)
                    .ok_or_else(|| Error::Config(format!("key column {k} is not in bronze")))
            })
            .collect::<Result<_>>()?;
        let key_cols: Vec<ArrayRef> = key_idx
            .iter()
            .map(|&i| batch.column(data_idx[i]).clone())
            .collect();
        let key_rows = key_rows(&key_cols)?;
        let name_to_idx: HashMap<&str, usize> = data_fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name().as_str(), i))
            .collect();
        let unchanged = match schema.index_of(COL_UNCHANGED_TOAST) {
            Ok(i) => {
                let list = lake::typed_column::<ListArray>(batch, i, table, "List(Utf8)")?;
                let names = list
                    .values()
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| Error::ColumnType {
                        table: table.into(),
                        column: COL_UNCHANGED_TOAST.into(),
                        expected: "List(Utf8)".into(),
                        found: list.data_type().to_string(),
                    })?;
                let offsets = list.value_offsets();
                (0..batch.num_rows())
                    .map(|r| {
                        if list.is_null(r) {
                            return Vec::new();
                        }
                        (offsets[r] as usize..offsets[r + 1] as usize)
                            .filter(|&i| names.is_valid(i))
                            .filter_map(|i| name_to_idx.get(names.value(i)).copied())
                            .collect()
                    })
                    .collect()
            }
            Err(_) => vec![Vec::new(); batch.num_rows()],
        };
        Ok(ChangeLog {
            batch,
            data_fields,
            data_idx,
            keys: key_rows,
            key_idx,
            op,
            lsn,
            ts,
            unchanged,
            toast_missing: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn ts(&self, row: usize) -> Option<i64> {
        self.ts.filter(|t| !t.is_null(row)).map(|t| t.value(row))
    }

    fn needs_lookup(&self, def: &SilverDef) -> bool {
        let toast = self.unchanged.iter().any(|u| !u.is_empty());
        toast || (def.history == History::Scd2 && def.track_columns.is_some())
    }

    /// One row per touched key: the key columns.
    fn touched_keys(&self) -> Result<RecordBatch> {
        let mut seen = std::collections::HashSet::new();
        let rows: Vec<usize> = (0..self.batch.num_rows())
            .filter(|&i| self.op.value(i) != "truncate" && seen.insert(&self.keys[i]))
            .collect();
        let idx =
            arrow::array::UInt32Array::from(rows.iter().map(|&r| r as u32).collect::<Vec<_>>());
        let fields: Vec<Field> = self
            .key_idx
            .iter()
            .map(|&k| self.data_fields[k].clone())
            .collect();
        let cols: Vec<ArrayRef> = self
            .key_idx
            .iter()
            .map(|&k| {
                arrow::compute::take(self.batch.column(self.data_idx[k]).as_ref(), &idx, None)
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::arrow("touched keys"))?;
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
            .map_err(Error::arrow("touched keys"))
    }

    /// Column sources of an upsert at `row`, filling unchanged TOAST from `prev`.
    fn upsert_srcs(&self, row: usize, prev: Option<&[Src]>) -> Vec<Src> {
        let mut srcs: Vec<Src> = (0..self.data_fields.len())
            .map(|_| Src::Change(row))
            .collect();
        for &c in &self.unchanged[row] {
            srcs[c] = prev.map(|p| p[c]).unwrap_or(Src::Unresolved);
        }
        srcs
    }

    /// Resolve `Unresolved` sources from the silver lookup.
    fn resolve(&self, srcs: &mut [Src], key: &OwnedRow, lookup: Option<&Lookup>, gone: bool) {
        for (c, s) in srcs.iter_mut().enumerate() {
            if *s != Src::Unresolved {
                continue;
            }
            *s = match lookup {
                Some(l) if !gone => match (l.rows.get(key), l.columns[c]) {
                    (Some(&r), Some(_)) => Src::Silver(r),
                    _ => Src::Missing,
                },
                _ => Src::Missing,
            };
            if *s == Src::Missing {
                self.toast_missing
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Build the data columns of output rows from their sources.
    fn build(&self, rows: &[Vec<Src>], lookup: Option<&Lookup>) -> Result<Vec<ArrayRef>> {
        let mut out = Vec::with_capacity(self.data_fields.len());
        for (c, f) in self.data_fields.iter().enumerate() {
            let change = self.batch.column(self.data_idx[c]).clone();
            let null = new_null_array(f.data_type(), 1);
            let silver = lookup.and_then(|l| l.columns[c].map(|i| l.batch.column(i).clone()));
            let sources: Vec<&dyn Array> = vec![
                change.as_ref(),
                null.as_ref(),
                silver.as_deref().unwrap_or(null.as_ref()),
            ];
            let idx: Vec<(usize, usize)> = rows
                .iter()
                .map(|r| match r[c] {
                    Src::Change(i) => (0, i),
                    Src::Silver(i) if silver.is_some() => (2, i),
                    _ => (1, 0),
                })
                .collect();
            out.push(
                interleave(&sources, &idx).map_err(Error::arrow(format!("build {}", f.name())))?,
            );
        }
        Ok(out)
    }

    /// Current state: one row per touched key, `upsert` or `delete`.
    /// Returns the merge source and the last TRUNCATE (LSN, time) if any.
    #[allow(clippy::type_complexity)]
    fn reduce_current(
        &self,
        def: &SilverDef,
        lookup: Option<&Lookup>,
    ) -> Result<(RecordBatch, Option<(i64, Option<i64>)>)> {
        // key → (last row, srcs or None for delete, gone)
        let mut state: HashMap<&OwnedRow, (usize, Option<Vec<Src>>, bool)> = HashMap::new();
        let mut order: Vec<&OwnedRow> = Vec::new();
        let mut truncated = None;
        for i in 0..self.batch.num_rows() {
            let key = &self.keys[i];
            match self.op.value(i) {
                "truncate" => {
                    state.clear();
                    order.clear();
                    truncated = Some((self.lsn.value(i), self.ts(i)));
                }
                "delete" => {
                    let gone = truncated.is_some();
                    if state.insert(key, (i, None, gone)).is_none() {
                        order.push(key);
                    }
                }
                _ => {
                    let prev = state.get(key);
                    let gone = truncated.is_some();
                    let srcs = self.upsert_srcs(i, prev.and_then(|p| p.1.as_deref()));
                    if state.insert(key, (i, Some(srcs), gone)).is_none() {
                        order.push(key);
                    }
                }
            }
        }
        let mut rows = Vec::with_capacity(order.len());
        let mut meta_rows = Vec::with_capacity(order.len());
        let mut actions = Vec::with_capacity(order.len());
        for key in order {
            let (row, srcs, gone) = state.remove(key).unwrap_or((0, None, true));
            match srcs {
                Some(mut s) => {
                    self.resolve(&mut s, key, lookup, gone);
                    rows.push(s);
                    actions.push("upsert");
                }
                None => {
                    rows.push(
                        (0..self.data_fields.len())
                            .map(|_| Src::Change(row))
                            .collect(),
                    );
                    actions.push("delete");
                }
            }
            meta_rows.push(row);
        }
        let mut fields: Vec<Field> = self.data_fields.clone();
        let mut cols = self.build(&rows, lookup)?;
        let take = arrow::array::UInt32Array::from(
            meta_rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
        );
        fields.push(Field::new(COL_LSN, DataType::Int64, false));
        cols.push(arrow::compute::take(self.lsn, &take, None).map_err(Error::arrow("lsn"))?);
        fields.push(ts_field(COL_COMMIT_TS));
        cols.push(self.ts_column(&meta_rows)?);
        if def.soft_delete {
            fields.push(Field::new(COL_DELETED, DataType::Boolean, false));
            cols.push(Arc::new(BooleanArray::from(
                actions.iter().map(|a| *a == "delete").collect::<Vec<_>>(),
            )));
        }
        fields.push(Field::new(COL_ACTION, DataType::Utf8, false));
        cols.push(Arc::new(StringArray::from(actions)));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
            .map_err(Error::arrow("silver merge source"))?;
        Ok((batch, truncated))
    }

    fn ts_column(&self, rows: &[usize]) -> Result<ArrayRef> {
        Ok(Arc::new(
            TimestampMicrosecondArray::from(rows.iter().map(|&r| self.ts(r)).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ))
    }

    /// SCD2: close actions for current silver versions, one insert per new
    /// version (one per key and source transaction).
    #[allow(clippy::type_complexity)]
    fn reduce_scd2(
        &self,
        def: &SilverDef,
        lookup: Option<&Lookup>,
    ) -> Result<(RecordBatch, Option<(i64, Option<i64>)>)> {
        let tracked: Option<Vec<usize>> = def.track_columns.as_ref().map(|t| {
            t.iter()
                .filter_map(|c| self.data_fields.iter().position(|f| f.name() == c))
                .collect()
        });
        let mut hist: HashMap<&OwnedRow, KeyHistory> = HashMap::new();
        let mut order: Vec<&OwnedRow> = Vec::new();
        let mut truncated = None;
        for i in 0..self.batch.num_rows() {
            let (lsn, ts) = (self.lsn.value(i), self.ts(i));
            let key = &self.keys[i];
            if self.op.value(i) == "truncate" {
                for h in hist.values_mut() {
                    h.versions.retain(|v| v.lsn != lsn);
                    if h.open {
                        if let Some(v) = h.versions.last_mut() {
                            v.to = Some((lsn, ts));
                        }
                        h.open = false;
                    }
                    // The TRUNCATE closes every current silver version.
                    h.prior = Prior::Keep;
                    h.prior_gone = true;
                }
                truncated = Some((lsn, ts));
                continue;
            }
            let h = hist.entry(key).or_insert_with(|| {
                order.push(key);
                KeyHistory {
                    first_row: i,
                    prior: Prior::Keep,
                    prior_gone: truncated.is_some()
                        || lookup.is_some_and(|l| !l.rows.contains_key(key)),
                    versions: Vec::new(),
                    open: false,
                }
            });
            // The values this change builds on.
            let prior_srcs: Option<Vec<Src>> = if h.prior_gone {
                None
            } else {
                match &h.prior {
                    Prior::Keep => Some(
                        (0..self.data_fields.len())
                            .map(
                                |c| match lookup.and_then(|l| l.rows.get(key).map(|&r| (l, r))) {
                                    Some((l, r)) if l.columns[c].is_some() => Src::Silver(r),
                                    Some(_) => Src::Missing,
                                    None => Src::Unresolved,
                                },
                            )
                            .collect(),
                    ),
                    Prior::Replace { srcs, .. } => Some(srcs.clone()),
                    Prior::Close { .. } => None,
                }
            };
            let prev: Option<Vec<Src>> = if h.open {
                h.versions.last().map(|v| v.srcs.clone())
            } else {
                prior_srcs
            };
            if self.op.value(i) == "delete" {
                if h.open {
                    let same_tx = h.versions.last().is_some_and(|v| v.lsn == lsn);
                    if same_tx {
                        h.versions.pop();
                    } else if let Some(v) = h.versions.last_mut() {
                        v.to = Some((lsn, ts));
                    }
                    h.open = false;
                } else if !h.prior_gone && !matches!(h.prior, Prior::Close { .. }) {
                    h.close_prior(lsn, ts, i);
                }
                continue;
            }
            let mut srcs = self.upsert_srcs(i, prev.as_deref());
            self.resolve(&mut srcs, key, lookup, h.prior_gone);
            let untracked_only = match (&tracked, &prev) {
                (Some(t), Some(p)) => t.iter().all(|&c| self.same_value(c, p[c], srcs[c], lookup)),
                _ => false,
            };
            if h.open {
                let last = h
                    .versions
                    .last_mut()
                    .filter(|v| v.lsn == lsn || untracked_only);
                if let Some(v) = last {
                    v.srcs = srcs;
                    continue;
                }
                if let Some(v) = h.versions.last_mut() {
                    v.to = Some((lsn, ts));
                }
            } else if prev.is_some() || !h.prior_gone {
                // Builds on the current silver version (or one that may exist).
                if untracked_only && !matches!(h.prior, Prior::Close { .. }) {
                    h.prior = Prior::Replace { srcs };
                    continue;
                }
                if !matches!(h.prior, Prior::Close { .. }) {
                    h.close_prior(lsn, ts, i);
                }
            }
            h.versions.push(Version {
                srcs,
                lsn,
                ts,
                to: None,
            });
            h.open = true;
        }
        // Rows: closes/replaces (merge key set), then inserts (merge key NULL).
        let mut srcs_rows: Vec<Vec<Src>> = Vec::new();
        let mut key_rows: Vec<Option<usize>> = Vec::new();
        let mut actions = Vec::new();
        let mut from: Vec<(Option<i64>, Option<i64>)> = Vec::new();
        let mut to: Vec<(Option<i64>, Option<i64>)> = Vec::new();
        let mut current = Vec::new();
        let change_row = |r: usize| -> Vec<Src> {
            (0..self.data_fields.len())
                .map(|_| Src::Change(r))
                .collect()
        };
        for key in &order {
            let h = &hist[key];
            match &h.prior {
                Prior::Keep => {}
                Prior::Replace { srcs, .. } => {
                    srcs_rows.push(srcs.clone());
                    key_rows.push(Some(h.first_row));
                    actions.push("replace");
                    from.push((None, None));
                    to.push((None, None));
                    current.push(true);
                }
                Prior::Close {
                    lsn,
                    ts,
                    replace,
                    row,
                } => {
                    srcs_rows.push(replace.clone().unwrap_or_else(|| change_row(*row)));
                    key_rows.push(Some(h.first_row));
                    actions.push(if replace.is_some() {
                        "close_replace"
                    } else {
                        "close"
                    });
                    from.push((None, None));
                    to.push((Some(*lsn), *ts));
                    current.push(false);
                }
            }
            for v in &h.versions {
                srcs_rows.push(v.srcs.clone());
                key_rows.push(None);
                actions.push("insert");
                from.push((Some(v.lsn), v.ts));
                to.push(v.to.map(|(l, t)| (Some(l), t)).unwrap_or((None, None)));
                current.push(v.to.is_none());
            }
        }
        let mut fields = self.data_fields.clone();
        let mut cols = self.build(&srcs_rows, lookup)?;
        fields.push(ts_field(COL_VALID_FROM));
        cols.push(Arc::new(
            TimestampMicrosecondArray::from(from.iter().map(|f| f.1).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ));
        fields.push(ts_field(COL_VALID_TO));
        cols.push(Arc::new(
            TimestampMicrosecondArray::from(to.iter().map(|f| f.1).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ));
        fields.push(Field::new(COL_VALID_FROM_LSN, DataType::Int64, true));
        cols.push(Arc::new(Int64Array::from(
            from.iter().map(|f| f.0).collect::<Vec<_>>(),
        )));
        fields.push(Field::new(COL_VALID_TO_LSN, DataType::Int64, true));
        cols.push(Arc::new(Int64Array::from(
            to.iter().map(|f| f.0).collect::<Vec<_>>(),
        )));
        fields.push(Field::new(COL_IS_CURRENT, DataType::Boolean, true));
        cols.push(Arc::new(BooleanArray::from(current)));
        for (i, &k) in self.key_idx.iter().enumerate() {
            let f = &self.data_fields[k];
            let change = self.batch.column(self.data_idx[k]).clone();
            let null = new_null_array(f.data_type(), 1);
            let idx: Vec<(usize, usize)> = key_rows
                .iter()
                .map(|r| match r {
                    Some(r) => (0, *r),
                    None => (1, 0),
                })
                .collect();
            fields.push(Field::new(
                format!("_mdl_mk_{i}"),
                f.data_type().clone(),
                true,
            ));
            cols.push(
                interleave(&[change.as_ref(), null.as_ref()], &idx)
                    .map_err(Error::arrow("merge key"))?,
            );
        }
        fields.push(Field::new(COL_ACTION, DataType::Utf8, false));
        cols.push(Arc::new(StringArray::from(actions)));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
            .map_err(Error::arrow("silver merge source"))?;
        Ok((batch, truncated))
    }

    /// Whether column `c` has the same value from two sources.
    fn same_value(&self, c: usize, a: Src, b: Src, lookup: Option<&Lookup>) -> bool {
        let value = |s: Src| -> Option<(ArrayRef, usize)> {
            match s {
                Src::Change(i) => Some((self.batch.column(self.data_idx[c]).clone(), i)),
                Src::Silver(i) => {
                    lookup.and_then(|l| l.columns[c].map(|k| (l.batch.column(k).clone(), i)))
                }
                _ => None,
            }
        };
        match (value(a), value(b)) {
            (Some((x, i)), Some((y, j))) => match (x.is_null(i), y.is_null(j)) {
                (true, true) => true,
                (false, false) => arrow::array::make_comparator(
                    x.as_ref(),
                    y.as_ref(),
                    arrow::compute::SortOptions::default(),
                )
                .map(|cmp| cmp(i, j).is_eq())
                .unwrap_or(false),
                _ => false,
            },
            (None, None) => true,
            _ => false,
        }
    }
}

/// Schema drift: columns bronze gained are added to silver (NULL in older rows).
async fn add_new_columns(silver: DeltaTable, data: &[Field], name: &str) -> Result<DeltaTable> {
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
    let schema = silver
        .snapshot()
        .map_err(Error::delta("silver snapshot"))?
        .snapshot()
        .arrow_schema();
    let mut new = Vec::new();
    for f in data {
        if schema.field_with_name(f.name()).is_err() {
            let field = f.clone().with_nullable(true);
            let kernel: deltalake::kernel::StructField =
                (&field).try_into_kernel().map_err(|e| Error::Delta {
                    context: format!("silver.{name}: column {}", f.name()),
                    source: e.into(),
                })?;
            new.push(kernel);
        }
    }
    if new.is_empty() {
        return Ok(silver);
    }
    tracing::info!(silver = %name, columns = new.len(), "schema drift: adding columns");
    silver
        .add_columns()
        .with_fields(new)
        .await
        .map_err(Error::delta(format!("silver.{name}: add columns")))
}

/// Hashable per-row keys of `key_cols`.
fn key_rows(key_cols: &[ArrayRef]) -> Result<Vec<OwnedRow>> {
    let conv = RowConverter::new(
        key_cols
            .iter()
            .map(|a| SortField::new(a.data_type().clone()))
            .collect(),
    )
    .map_err(Error::arrow("key rows"))?;
    let rows = conv
        .convert_columns(key_cols)
        .map_err(Error::arrow("key rows"))?;
    Ok((0..rows.num_rows()).map(|i| rows.row(i).owned()).collect())
}

fn ts_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_expectation_gives_one_value_per_row_or_an_error() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(vec![Some(1), None, Some(3)]))],
        )
        .expect("batch");
        let ctx = lake::session();
        let pass = evaluate_predicate(&ctx, &batch, "v > 1")
            .await
            .expect("a condition on each row");
        // NULL passes (SQL CHECK semantics).
        assert_eq!(
            pass.iter().collect::<Vec<_>>(),
            vec![Some(false), Some(true), Some(true)]
        );
        // Aggregates and set-returning functions are no condition on each
        // row: DataFusion 55 refuses them when planning, and a result of
        // another length is refused after evaluation (never indexed).
        for bad in [
            "count(*) > 0",
            "sum(v) > 1",
            "max(v) = v",
            "unnest(make_array(v, v)) > 1",
        ] {
            let e = evaluate_predicate(&ctx, &batch, bad)
                .await
                .err()
                .unwrap_or_else(|| panic!("{bad} was accepted as a row condition"));
            assert!(!e.to_string().is_empty());
        }
    }

    /// A bronze table someone else wrote (or rewrote) with other column
    /// types is refused with the table, the column and both types — the
    /// checked accessors, not a panicking cast.
    #[test]
    fn a_bronze_table_of_other_types_is_an_error_naming_the_column() {
        use arrow::array::{Int32Array, ListBuilder, StringBuilder};
        let op = || Arc::new(StringArray::from(vec!["insert"])) as ArrayRef;
        let id = || Arc::new(Int64Array::from(vec![1])) as ArrayRef;
        let make = |cols: Vec<(&str, ArrayRef)>| RecordBatch::try_from_iter(cols).expect("batch");
        let keys = vec!["id".to_string()];

        let ok = make(vec![
            (COL_OP, op()),
            (COL_LSN, Arc::new(Int64Array::from(vec![7])) as ArrayRef),
            ("id", id()),
        ]);
        assert!(ChangeLog::new(&ok, &keys, "bronze s.t").is_ok());

        let cases: Vec<(RecordBatch, &str, &str)> = vec![
            (
                make(vec![
                    (COL_OP, op()),
                    (COL_LSN, Arc::new(Int32Array::from(vec![7])) as ArrayRef),
                    ("id", id()),
                ]),
                COL_LSN,
                "Int32",
            ),
            (
                make(vec![
                    (COL_OP, Arc::new(Int64Array::from(vec![1])) as ArrayRef),
                    (COL_LSN, Arc::new(Int64Array::from(vec![7])) as ArrayRef),
                    ("id", id()),
                ]),
                COL_OP,
                "Int64",
            ),
            (
                make(vec![
                    (COL_OP, op()),
                    (COL_LSN, Arc::new(Int64Array::from(vec![7])) as ArrayRef),
                    (
                        COL_COMMIT_TS,
                        Arc::new(Int64Array::from(vec![0])) as ArrayRef,
                    ),
                    ("id", id()),
                ]),
                COL_COMMIT_TS,
                "Int64",
            ),
            (
                make(vec![
                    (COL_OP, op()),
                    (COL_LSN, Arc::new(Int64Array::from(vec![7])) as ArrayRef),
                    (
                        COL_UNCHANGED_TOAST,
                        Arc::new(StringArray::from(vec!["x"])) as ArrayRef,
                    ),
                    ("id", id()),
                ]),
                COL_UNCHANGED_TOAST,
                "Utf8",
            ),
            (make(vec![(COL_OP, op()), ("id", id())]), COL_LSN, "missing"),
        ];
        for (batch, column, found) in cases {
            let e = ChangeLog::new(&batch, &keys, "bronze s.t")
                .err()
                .unwrap_or_else(|| panic!("{column} as {found} was accepted"));
            assert!(
                matches!(&e, Error::ColumnType { table, column: c, found: f, .. }
                    if table == "bronze s.t" && c == column && f == found),
                "{e:?}"
            );
            assert_eq!(e.retry_policy(), crate::error::RetryPolicy::NeedsOperator);
        }

        // Unchanged-TOAST names are read through the list's offsets (a
        // sliced list, NULL entries) without reading past an entry.
        let mut toast = ListBuilder::new(StringBuilder::new());
        toast.values().append_value("id");
        toast.values().append_null();
        toast.append(true);
        toast.append_null();
        let batch = make(vec![
            (
                COL_OP,
                Arc::new(StringArray::from(vec!["update", "insert"])) as ArrayRef,
            ),
            (COL_LSN, Arc::new(Int64Array::from(vec![7, 8])) as ArrayRef),
            (COL_UNCHANGED_TOAST, Arc::new(toast.finish()) as ArrayRef),
            ("id", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
        ]);
        let log = ChangeLog::new(&batch, &keys, "bronze s.t").expect("change log");
        assert_eq!(log.unchanged, vec![vec![0], vec![]]);
        let sliced = batch.slice(1, 1);
        let log = ChangeLog::new(&sliced, &keys, "bronze s.t").expect("sliced change log");
        assert_eq!(log.unchanged, vec![Vec::<usize>::new()]);
    }
}
