//! In-memory [`BronzeLog`] and [`SilverStore`] for unit tests of a silver
//! run: the generation check, the rebuild, the slices up to the watermark,
//! a failed commit and its rerun, TRUNCATE, soft delete, SCD2 and
//! expectations, without Delta or Postgres.
//!
//! [`MemorySilver`] keeps rows as `ScalarValue`s and applies a merge source
//! with the semantics of the Delta MERGE in [`super::store`]: every source
//! row is matched against the table as it was before the slice (current
//! state on the key; SCD2 on the key's `_mdl_mk_<i>` and the current
//! version), then updates, deletes and inserts are applied. A commit is all
//! or nothing: an injected failure changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use deltalake::datafusion::logical_expr::LogicalPlan;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::datafusion::scalar::ScalarValue;

use crate::catalog::{History, SilverDef};
use crate::error::{Error, Result};

use super::store::{BronzeLog, Recorded, SilverStore, Slice};
use super::{COL_ACTION, COL_DELETED, COL_IS_CURRENT, COL_VALID_TO, COL_VALID_TO_LSN};
use crate::bronze::{COL_COMMIT_TS, COL_LSN};

/// A bronze change log held in one batch of bronze-shaped rows.
pub(super) struct MemoryBronze {
    pub rows: RecordBatch,
    pub generation: Option<i64>,
    pub position: Option<i64>,
}

#[async_trait]
impl BronzeLog for MemoryBronze {
    async fn generation(&self) -> Result<Option<i64>> {
        Ok(self.generation)
    }

    async fn stream_position(&self) -> Result<Option<i64>> {
        Ok(self.position)
    }

    fn data_fields(&self) -> Result<Vec<Field>> {
        Ok(super::store::source_fields(&self.rows.schema()))
    }

    async fn register(&self, ctx: &SessionContext, name: &str) -> Result<()> {
        ctx.register_batch(name, self.rows.clone())
            .map(|_| ())
            .map_err(Error::datafusion("register bronze"))
    }
}

/// A silver table in memory; `fail_apply` makes that apply call (1-based)
/// fail before it changes anything.
#[derive(Default)]
pub(super) struct MemorySilver {
    schema: Option<SchemaRef>,
    rows: Vec<Vec<ScalarValue>>,
    recorded: Option<Recorded>,
    applies: usize,
    pub fail_apply: Option<usize>,
}

impl MemorySilver {
    /// The rows as one batch (None: never written).
    pub fn batch(&self) -> Option<RecordBatch> {
        let schema = self.schema.clone()?;
        let columns: Vec<ArrayRef> = (0..schema.fields().len())
            .map(|c| {
                let values = self.rows.iter().map(|r| r[c].clone());
                if self.rows.is_empty() {
                    Ok(arrow::array::new_empty_array(schema.field(c).data_type()))
                } else {
                    ScalarValue::iter_to_array(values)
                }
            })
            .collect::<std::result::Result<_, _>>()
            .expect("columns");
        Some(RecordBatch::try_new(schema, columns).expect("batch"))
    }

    /// The rows as text, sorted: `column=value` pairs of the named columns.
    pub fn rendered(&self, columns: &[&str]) -> Vec<String> {
        let Some(schema) = &self.schema else {
            return Vec::new();
        };
        let idx: Vec<usize> = columns
            .iter()
            .map(|c| schema.index_of(c).expect("column"))
            .collect();
        let mut out: Vec<String> = self
            .rows
            .iter()
            .map(|r| {
                idx.iter()
                    .zip(columns)
                    .map(|(&i, c)| format!("{c}={}", r[i]))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        out.sort();
        out
    }

    pub fn recorded_now(&self) -> Option<Recorded> {
        self.recorded
    }

    fn col(&self, name: &str) -> Result<usize> {
        self.schema
            .as_ref()
            .and_then(|s| s.index_of(name).ok())
            .ok_or_else(|| Error::Protocol(format!("memory silver: no column {name}")))
    }

    /// Columns of `fields` the table lacks are added (NULL in older rows).
    fn add_columns(&mut self, fields: &[Field]) -> Result<()> {
        let schema = self
            .schema
            .clone()
            .ok_or_else(|| Error::Protocol("memory silver: never written".into()))?;
        let mut all: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        for f in fields {
            if schema.field_with_name(f.name()).is_err() {
                let null = ScalarValue::try_from(f.data_type())
                    .map_err(Error::datafusion("null of new column"))?;
                for r in &mut self.rows {
                    r.push(null.clone());
                }
                all.push(f.clone().with_nullable(true));
            }
        }
        self.schema = Some(Arc::new(Schema::new(all)));
        Ok(())
    }
}

/// Row `i` of `batch` as scalars, by column name.
fn row_of(batch: &RecordBatch, i: usize) -> Result<HashMap<String, ScalarValue>> {
    let schema = batch.schema();
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(c, f)| {
            ScalarValue::try_from_array(batch.column(c), i)
                .map(|v| (f.name().clone(), v))
                .map_err(Error::datafusion("row value"))
        })
        .collect()
}

#[async_trait]
impl SilverStore for MemorySilver {
    async fn recorded(&self) -> Result<Option<Recorded>> {
        Ok(self.recorded)
    }

    async fn current_rows(&self, def: &SilverDef, keys: RecordBatch) -> Result<RecordBatch> {
        let batch = self
            .batch()
            .ok_or_else(|| Error::Protocol("memory silver: never written".into()))?;
        let key_cols: Vec<usize> = def
            .keys
            .iter()
            .map(|k| self.col(k))
            .collect::<Result<_>>()?;
        let mut wanted = std::collections::HashSet::new();
        for i in 0..keys.num_rows() {
            let r = row_of(&keys, i)?;
            wanted.insert(
                def.keys
                    .iter()
                    .map(|k| r[k.as_str()].clone())
                    .collect::<Vec<_>>(),
            );
        }
        let flag = match (def.history, def.soft_delete) {
            (History::Scd2, _) => Some((self.col(COL_IS_CURRENT)?, true)),
            (History::Current, true) => Some((self.col(COL_DELETED)?, false)),
            _ => None,
        };
        let keep: Vec<u32> = (0..self.rows.len())
            .filter(|&i| {
                let r = &self.rows[i];
                let key: Vec<ScalarValue> = key_cols.iter().map(|&c| r[c].clone()).collect();
                wanted.contains(&key)
                    && flag.is_none_or(|(c, want)| r[c] == ScalarValue::Boolean(Some(want)))
            })
            .map(|i| i as u32)
            .collect();
        arrow::compute::take_record_batch(&batch, &arrow::array::UInt32Array::from(keep))
            .map_err(Error::arrow("lookup rows"))
    }

    async fn rebuild(
        &mut self,
        _def: &SilverDef,
        ctx: &SessionContext,
        plan: LogicalPlan,
        generation: i64,
        definition: i64,
    ) -> Result<()> {
        let df = ctx
            .execute_logical_plan(plan)
            .await
            .map_err(Error::datafusion("rebuild plan"))?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df
            .collect()
            .await
            .map_err(Error::datafusion("rebuild rows"))?;
        let mut rows = Vec::new();
        for b in &batches {
            for i in 0..b.num_rows() {
                let r = row_of(b, i)?;
                rows.push(
                    schema
                        .fields()
                        .iter()
                        .map(|f| r[f.name()].clone())
                        .collect(),
                );
            }
        }
        self.schema = Some(schema);
        self.rows = rows;
        self.recorded = Some(Recorded {
            applied: Some(generation + 1),
            generation: Some(generation),
            definition: Some(definition),
        });
        Ok(())
    }

    async fn apply(
        &mut self,
        def: &SilverDef,
        _ctx: &SessionContext,
        slice: Slice<'_>,
    ) -> Result<()> {
        self.applies += 1;
        if self.fail_apply == Some(self.applies) {
            return Err(Error::Protocol(format!(
                "injected failure of apply {}",
                self.applies
            )));
        }
        // All or nothing: work on a copy.
        let mut next = MemorySilver {
            schema: self.schema.clone(),
            rows: self.rows.clone(),
            recorded: self.recorded,
            applies: self.applies,
            fail_apply: None,
        };
        next.add_columns(slice.data_fields)?;
        next.merge(def, &slice)?;
        let recorded = next.recorded.unwrap_or_default();
        self.schema = next.schema;
        self.rows = next.rows;
        self.recorded = Some(Recorded {
            applied: Some(slice.hi),
            ..recorded
        });
        Ok(())
    }

    fn version(&self) -> Option<i64> {
        self.recorded.map(|_| self.applies as i64)
    }
}

impl MemorySilver {
    fn merge(&mut self, def: &SilverDef, slice: &Slice<'_>) -> Result<()> {
        let schema = self
            .schema
            .clone()
            .ok_or_else(|| Error::Protocol("memory silver: never written".into()))?;
        let source: Vec<HashMap<String, ScalarValue>> = (0..slice.source.num_rows())
            .map(|i| row_of(&slice.source, i))
            .collect::<Result<_>>()?;
        let action = |r: &HashMap<String, ScalarValue>| match &r[COL_ACTION] {
            ScalarValue::Utf8(Some(a)) => a.clone(),
            other => format!("{other}"),
        };
        let value = |r: &HashMap<String, ScalarValue>, f: &Field| {
            r.get(f.name()).cloned().map_or_else(
                || ScalarValue::try_from(f.data_type()).map_err(Error::datafusion("null")),
                Ok,
            )
        };
        let key_cols: Vec<usize> = def
            .keys
            .iter()
            .map(|k| self.col(k))
            .collect::<Result<_>>()?;
        let data: Vec<String> = slice.data_fields.iter().map(|f| f.name().clone()).collect();
        let bool_of = |v: bool| ScalarValue::Boolean(Some(v));

        if let Some((t_lsn, t_ts)) = slice.truncated {
            match (def.history, def.soft_delete) {
                (History::Current, false) => {
                    self.rows = source
                        .iter()
                        .filter(|r| action(r) == "upsert")
                        .map(|r| schema.fields().iter().map(|f| value(r, f)).collect())
                        .collect::<Result<_>>()?;
                    return Ok(());
                }
                (History::Current, true) => {
                    let (d, l) = (self.col(COL_DELETED)?, self.col(COL_LSN)?);
                    for r in &mut self.rows {
                        if r[d] == bool_of(false) {
                            r[d] = bool_of(true);
                            r[l] = ScalarValue::Int64(Some(t_lsn));
                        }
                    }
                }
                (History::Scd2, _) => {
                    let (c, tl, tt) = (
                        self.col(COL_IS_CURRENT)?,
                        self.col(COL_VALID_TO_LSN)?,
                        self.col(COL_VALID_TO)?,
                    );
                    let ts_type = schema.field(tt).data_type().clone();
                    for r in &mut self.rows {
                        if r[c] == bool_of(true) {
                            r[c] = bool_of(false);
                            r[tl] = ScalarValue::Int64(Some(t_lsn));
                            r[tt] = match t_ts {
                                Some(us) => {
                                    ScalarValue::TimestampMicrosecond(Some(us), Some("UTC".into()))
                                }
                                None => ScalarValue::try_from(&ts_type)
                                    .map_err(Error::datafusion("null"))?,
                            };
                        }
                    }
                }
            }
        }

        // Each source row's match in the table as it was before the slice.
        let current_col = match def.history {
            History::Scd2 => Some(self.col(COL_IS_CURRENT)?),
            History::Current => None,
        };
        let mut index: HashMap<Vec<ScalarValue>, usize> = HashMap::new();
        for (i, r) in self.rows.iter().enumerate() {
            if current_col.is_none_or(|c| r[c] == bool_of(true)) {
                index.insert(key_cols.iter().map(|&c| r[c].clone()).collect(), i);
            }
        }
        let matched: Vec<Option<usize>> = source
            .iter()
            .map(|r| {
                let key: Vec<ScalarValue> = match def.history {
                    History::Current => def.keys.iter().map(|k| r[k.as_str()].clone()).collect(),
                    History::Scd2 => (0..def.keys.len())
                        .map(|i| r[&format!("_mdl_mk_{i}")].clone())
                        .collect(),
                };
                // NULL never matches, as in SQL.
                if key.iter().any(ScalarValue::is_null) {
                    None
                } else {
                    index.get(&key).copied()
                }
            })
            .collect();

        let mut deleted = vec![false; self.rows.len()];
        let mut inserts = Vec::new();
        let set = |row: &mut Vec<ScalarValue>, r: &HashMap<String, ScalarValue>, c: &str| {
            if let (Ok(i), Some(v)) = (schema.index_of(c), r.get(c)) {
                row[i] = v.clone();
            }
        };
        for (r, m) in source.iter().zip(&matched) {
            let a = action(r);
            match (def.history, a.as_str(), m) {
                (History::Current, "delete", Some(i)) if def.soft_delete => {
                    for c in [COL_DELETED, COL_LSN, COL_COMMIT_TS] {
                        set(&mut self.rows[*i], r, c);
                    }
                    let d = self.col(COL_DELETED)?;
                    self.rows[*i][d] = bool_of(true);
                }
                (History::Current, "delete", Some(i)) => deleted[*i] = true,
                (History::Current, "upsert", Some(i)) => {
                    for c in data
                        .iter()
                        .map(String::as_str)
                        .chain([COL_LSN, COL_COMMIT_TS])
                    {
                        set(&mut self.rows[*i], r, c);
                    }
                    if def.soft_delete {
                        set(&mut self.rows[*i], r, COL_DELETED);
                    }
                }
                (History::Current, "upsert", None) | (History::Scd2, "insert", None) => inserts
                    .push(
                        schema
                            .fields()
                            .iter()
                            .map(|f| value(r, f))
                            .collect::<Result<Vec<_>>>()?,
                    ),
                (History::Scd2, "close", Some(i)) => {
                    for c in [COL_VALID_TO, COL_VALID_TO_LSN, COL_IS_CURRENT] {
                        set(&mut self.rows[*i], r, c);
                    }
                }
                (History::Scd2, "close_replace", Some(i)) => {
                    for c in data.iter().map(String::as_str).chain([
                        COL_VALID_TO,
                        COL_VALID_TO_LSN,
                        COL_IS_CURRENT,
                    ]) {
                        set(&mut self.rows[*i], r, c);
                    }
                }
                (History::Scd2, "replace", Some(i)) => {
                    for c in &data {
                        set(&mut self.rows[*i], r, c);
                    }
                }
                // Unmatched updates and deletes, matched inserts: no clause.
                _ => {}
            }
        }
        let mut kept: Vec<Vec<ScalarValue>> = std::mem::take(&mut self.rows)
            .into_iter()
            .zip(deleted)
            .filter_map(|(r, d)| (!d).then_some(r))
            .collect();
        kept.extend(inserts);
        self.rows = kept;
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use arrow::array::{
        Int64Array, ListBuilder, StringArray, StringBuilder, TimestampMicrosecondArray,
    };

    use super::super::{Progress, SilverReport, definition_hash};
    use super::*;
    use crate::bronze::{COL_OP, COL_SEQ, COL_UNCHANGED_TOAST, COL_XID};
    use crate::catalog::{Expectation, OnViolation};
    use crate::lake::{Lake, TableCache};
    use crate::lsn::Lsn;
    use crate::refine::Refiner;

    /// Bronze rows `(op, commit LSN, id, v)` in log order.
    fn bronze(rows: &[(&str, i64, Option<i64>, Option<&str>)]) -> RecordBatch {
        let mut toast = ListBuilder::new(StringBuilder::new());
        for _ in rows {
            toast.append_null();
        }
        RecordBatch::try_from_iter(vec![
            (
                COL_OP,
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
            ),
            (
                COL_LSN,
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ),
            (
                COL_SEQ,
                Arc::new(Int64Array::from_iter_values(0..rows.len() as i64)),
            ),
            (
                COL_COMMIT_TS,
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1 * 1000))
                        .with_timezone("UTC"),
                ),
            ),
            (
                COL_XID,
                Arc::new(Int64Array::from(vec![None::<i64>; rows.len()])),
            ),
            (COL_UNCHANGED_TOAST, Arc::new(toast.finish())),
            (
                "id",
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.2))),
            ),
            (
                "v",
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.3))),
            ),
        ])
        .expect("bronze batch")
    }

    /// A copy at LSN 10 of ids 1–3, then changes at 20 … 50.
    fn log() -> Vec<(&'static str, i64, Option<i64>, Option<&'static str>)> {
        vec![
            ("snapshot", 10, Some(1), Some("a")),
            ("snapshot", 10, Some(2), Some("b")),
            ("snapshot", 10, Some(3), Some("c")),
            ("update", 20, Some(1), Some("a2")),
            ("delete", 30, Some(2), None),
            ("insert", 40, Some(4), Some("d")),
            ("update", 50, Some(3), Some("c2")),
        ]
    }

    fn memory_bronze(rows: &[(&str, i64, Option<i64>, Option<&str>)]) -> MemoryBronze {
        MemoryBronze {
            rows: bronze(rows),
            generation: rows.iter().filter(|r| r.0 == "snapshot").map(|r| r.1).max(),
            position: rows.iter().map(|r| r.1).max(),
        }
    }

    pub(in crate::silver) fn def(history: History, soft_delete: bool) -> SilverDef {
        SilverDef {
            name: "t".into(),
            source: crate::bronze::TableId::new("public", "t"),
            keys: vec!["id".into()],
            history,
            track_columns: None,
            soft_delete,
            expectations: Vec::new(),
            publish: None,
        }
    }

    /// Run `def` at `w` against `bronze` into `silver`, with slices of at
    /// most `batch_rows` changes.
    async fn run(
        def: &SilverDef,
        w: i64,
        batch_rows: usize,
        bronze: &MemoryBronze,
        silver: &mut MemorySilver,
    ) -> (Result<Progress>, SilverReport) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = crate::Config {
            lake_url: dir.path().display().to_string(),
            ..crate::Config::default()
        };
        let lake = Lake::from_config(&cfg).expect("lake");
        let tables = TableCache::default();
        let mut refiner = Refiner::new(&cfg, &lake, &tables);
        refiner.batch_rows = batch_rows;
        let mut report = SilverReport::default();
        let progress = refiner
            .run(
                def,
                Lsn::from_lake(w),
                definition_hash(def),
                bronze,
                silver,
                &mut report,
            )
            .await;
        (progress, report)
    }

    fn rows(silver: &MemorySilver) -> Vec<String> {
        silver.rendered(&["id", "v"])
    }

    #[tokio::test]
    async fn a_run_rebuilds_from_the_copy_then_applies_changes_up_to_the_watermark() {
        let d = def(History::Current, false);
        let bronze = memory_bronze(&log());
        let mut silver = MemorySilver::default();

        let (p, report) = run(&d, 35, 1000, &bronze, &mut silver).await;
        assert_eq!(p.expect("run"), Progress::Written { sliced: true });
        assert_eq!(rows(&silver), ["id=1 v=a2", "id=3 v=c"]);
        assert_eq!(
            silver.recorded_now(),
            Some(Recorded {
                applied: Some(35),
                generation: Some(10),
                definition: Some(definition_hash(&d)),
            })
        );
        assert_eq!(
            report.rows_in,
            3 + 2,
            "the copy and the two changes below 35"
        );

        // A watermark at a commit LSN excludes that transaction: the table
        // then records bronze's last commit LSN, and holds less than bronze.
        let (p, _) = run(&d, 50, 1000, &bronze, &mut silver).await;
        assert_eq!(p.expect("run"), Progress::Written { sliced: true });
        assert_eq!(rows(&silver), ["id=1 v=a2", "id=3 v=c", "id=4 v=d"]);
        assert_eq!(silver.recorded_now().and_then(|r| r.applied), Some(50));

        let (p, _) = run(&d, 60, 1000, &bronze, &mut silver).await;
        assert_eq!(p.expect("run"), Progress::Written { sliced: true });
        assert_eq!(rows(&silver), ["id=1 v=a2", "id=3 v=c2", "id=4 v=d"]);
        assert_eq!(silver.recorded_now().and_then(|r| r.applied), Some(60));

        // Bronze holds nothing at or above 60: nothing to read or write.
        let before = silver.version();
        let (p, _) = run(&d, 70, 1000, &bronze, &mut silver).await;
        assert_eq!(p.expect("run"), Progress::UpToDate);
        assert_eq!(silver.version(), before);
    }

    #[tokio::test]
    async fn a_failed_commit_leaves_the_last_slice_and_a_rerun_gives_the_same_table() {
        let d = def(History::Current, false);
        let bronze = memory_bronze(&log());
        let mut reference = MemorySilver::default();
        run(&d, 60, 1, &bronze, &mut reference)
            .await
            .0
            .expect("reference run");

        // One transaction per slice: (20, 30) commits, (30, 40) fails.
        let mut silver = MemorySilver {
            fail_apply: Some(2),
            ..MemorySilver::default()
        };
        let (p, _) = run(&d, 60, 1, &bronze, &mut silver).await;
        let e = p.expect_err("the injected failure");
        assert!(e.to_string().contains("injected failure of apply 2"), "{e}");
        assert_eq!(silver.recorded_now().and_then(|r| r.applied), Some(30));
        assert_eq!(rows(&silver), ["id=1 v=a2", "id=2 v=b", "id=3 v=c"]);

        silver.fail_apply = None;
        let (p, _) = run(&d, 60, 1, &bronze, &mut silver).await;
        assert_eq!(p.expect("rerun"), Progress::Written { sliced: true });
        assert_eq!(rows(&silver), rows(&reference));
        assert_eq!(rows(&silver), ["id=1 v=a2", "id=3 v=c2", "id=4 v=d"]);
        assert_eq!(silver.recorded_now(), reference.recorded_now());
    }

    #[tokio::test]
    async fn a_new_generation_or_definition_rebuilds_the_table() {
        let d = def(History::Current, false);
        let mut silver = MemorySilver::default();
        run(&d, 60, 1000, &memory_bronze(&log()), &mut silver)
            .await
            .0
            .expect("run");

        // A resync: a new copy at 100 replaces everything before it.
        let mut resynced = log();
        resynced.extend([
            ("snapshot", 100, Some(1), Some("x")),
            ("snapshot", 100, Some(5), Some("y")),
            ("insert", 110, Some(6), Some("z")),
        ]);
        let bronze = memory_bronze(&resynced);
        let (p, _) = run(&d, 120, 1000, &bronze, &mut silver).await;
        assert_eq!(p.expect("run"), Progress::Written { sliced: true });
        assert_eq!(rows(&silver), ["id=1 v=x", "id=5 v=y", "id=6 v=z"]);
        assert_eq!(silver.recorded_now().and_then(|r| r.generation), Some(100));

        // A changed definition (soft delete on) rebuilds from the same copy.
        let soft = def(History::Current, true);
        assert_ne!(definition_hash(&soft), definition_hash(&d));
        let (p, _) = run(&soft, 120, 1000, &bronze, &mut silver).await;
        assert_eq!(p.expect("run"), Progress::Written { sliced: true });
        assert_eq!(
            silver.recorded_now().and_then(|r| r.definition),
            Some(definition_hash(&soft))
        );
        assert_eq!(
            silver.rendered(&["id", "v", COL_DELETED]),
            [
                "id=1 v=x _mdl_deleted=false",
                "id=5 v=y _mdl_deleted=false",
                "id=6 v=z _mdl_deleted=false"
            ]
        );
    }

    #[tokio::test]
    async fn a_table_waits_for_its_copy_and_for_the_stream_to_pass_it() {
        let d = def(History::Current, false);
        let mut silver = MemorySilver::default();
        let no_copy = MemoryBronze {
            generation: None,
            ..memory_bronze(&log())
        };
        let (p, report) = run(&d, 60, 1000, &no_copy, &mut silver).await;
        assert_eq!(p.expect("run"), Progress::Waiting);
        assert!(
            report
                .waiting
                .as_deref()
                .is_some_and(|w| w.contains("initial copy")),
            "{report:?}"
        );
        let (p, report) = run(&d, 10, 1000, &memory_bronze(&log()), &mut silver).await;
        assert_eq!(p.expect("run"), Progress::Waiting);
        assert!(
            report
                .waiting
                .as_deref()
                .is_some_and(|w| w.contains("not yet passed the copy")),
            "{report:?}"
        );
        assert!(silver.batch().is_none(), "a waiting table was written");
    }

    /// The copy, an insert, a TRUNCATE at 30, an insert after it.
    fn truncated_log() -> Vec<(&'static str, i64, Option<i64>, Option<&'static str>)> {
        vec![
            ("snapshot", 10, Some(1), Some("a")),
            ("snapshot", 10, Some(2), Some("b")),
            ("insert", 20, Some(4), Some("d")),
            ("truncate", 30, None, None),
            ("insert", 40, Some(5), Some("e")),
        ]
    }

    #[tokio::test]
    async fn a_truncate_empties_current_state_marks_soft_deletes_and_closes_history() {
        let bronze = memory_bronze(&truncated_log());

        let mut current = MemorySilver::default();
        run(
            &def(History::Current, false),
            50,
            1000,
            &bronze,
            &mut current,
        )
        .await
        .0
        .expect("current");
        assert_eq!(rows(&current), ["id=5 v=e"]);

        let mut soft = MemorySilver::default();
        run(&def(History::Current, true), 50, 1000, &bronze, &mut soft)
            .await
            .0
            .expect("soft delete");
        assert_eq!(
            soft.rendered(&["id", COL_DELETED, COL_LSN]),
            [
                "id=1 _mdl_deleted=true _mdl_lsn=30",
                "id=2 _mdl_deleted=true _mdl_lsn=30",
                "id=4 _mdl_deleted=true _mdl_lsn=30",
                "id=5 _mdl_deleted=false _mdl_lsn=40"
            ]
        );

        let mut history = MemorySilver::default();
        run(&def(History::Scd2, false), 50, 1000, &bronze, &mut history)
            .await
            .0
            .expect("scd2");
        assert_eq!(
            history.rendered(&["id", COL_IS_CURRENT, COL_VALID_TO_LSN]),
            [
                "id=1 _mdl_is_current=false _mdl_valid_to_lsn=30",
                "id=2 _mdl_is_current=false _mdl_valid_to_lsn=30",
                "id=4 _mdl_is_current=false _mdl_valid_to_lsn=30",
                "id=5 _mdl_is_current=true _mdl_valid_to_lsn=NULL"
            ]
        );
    }

    #[tokio::test]
    async fn scd2_keeps_one_version_per_source_transaction() {
        let d = def(History::Scd2, false);
        let bronze = memory_bronze(&log());
        let mut silver = MemorySilver::default();
        run(&d, 60, 1000, &bronze, &mut silver)
            .await
            .0
            .expect("run");
        assert_eq!(
            silver.rendered(&[
                "id",
                "v",
                COL_IS_CURRENT,
                "_mdl_valid_from_lsn",
                COL_VALID_TO_LSN
            ]),
            [
                "id=1 v=a _mdl_is_current=false _mdl_valid_from_lsn=10 _mdl_valid_to_lsn=20",
                "id=1 v=a2 _mdl_is_current=true _mdl_valid_from_lsn=20 _mdl_valid_to_lsn=NULL",
                "id=2 v=b _mdl_is_current=false _mdl_valid_from_lsn=10 _mdl_valid_to_lsn=30",
                "id=3 v=c _mdl_is_current=false _mdl_valid_from_lsn=10 _mdl_valid_to_lsn=50",
                "id=3 v=c2 _mdl_is_current=true _mdl_valid_from_lsn=50 _mdl_valid_to_lsn=NULL",
                "id=4 v=d _mdl_is_current=true _mdl_valid_from_lsn=40 _mdl_valid_to_lsn=NULL",
            ]
        );
    }

    #[tokio::test]
    async fn a_rebuild_reports_the_rows_it_writes() {
        let copy: Vec<_> = log().into_iter().filter(|r| r.0 == "snapshot").collect();
        let bronze = memory_bronze(&copy);
        let d = def(History::Current, false);
        let mut silver = MemorySilver::default();
        let (p, report) = run(&d, 15, 1000, &bronze, &mut silver).await;
        p.expect("run");
        assert_eq!(rows(&silver), ["id=1 v=a", "id=2 v=b", "id=3 v=c"]);
        assert_eq!((report.rows_in, report.rows_out), (3, 3));

        // A `drop` rule keeps a row out of silver: read, not written.
        let mut d = def(History::Current, false);
        d.expectations.push(Expectation {
            name: "v_is_not_b".into(),
            predicate: "v <> 'b'".into(),
            on_violation: OnViolation::Drop,
        });
        let mut silver = MemorySilver::default();
        let (p, report) = run(&d, 15, 1000, &bronze, &mut silver).await;
        p.expect("run");
        assert_eq!(rows(&silver), ["id=1 v=a", "id=3 v=c"]);
        assert_eq!((report.rows_in, report.rows_out), (3, 2));
    }

    #[tokio::test]
    async fn a_failing_expectation_stops_the_table_at_its_last_good_slice() {
        let mut d = def(History::Current, false);
        d.expectations.push(Expectation {
            name: "v_is_not_bad".into(),
            predicate: "v <> 'bad'".into(),
            on_violation: OnViolation::Fail,
        });
        let mut changes = log();
        changes.push(("update", 55, Some(4), Some("bad")));
        let bronze = memory_bronze(&changes);
        let mut silver = MemorySilver::default();
        let (p, report) = run(&d, 60, 1, &bronze, &mut silver).await;
        match p {
            Err(Error::Expectation {
                rule,
                failed,
                example,
                ..
            }) => {
                assert_eq!((rule.as_str(), failed), ("v_is_not_bad", 1));
                assert!(example.contains('4'), "{example}");
            }
            other => panic!("expected the expectation to fail the run: {other:?}"),
        }
        // Every slice before the bad one is applied and recorded.
        assert_eq!(silver.recorded_now().and_then(|r| r.applied), Some(55));
        assert_eq!(rows(&silver), ["id=1 v=a2", "id=3 v=c2", "id=4 v=d"]);
        assert_eq!(report.expectations["v_is_not_bad"].failed, 1);
    }
}
