//! One slice of bronze changes read, reduced, checked against the
//! expectations and MERGEd into the silver table in one Delta commit.

use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch, StringArray};
use deltalake::DeltaTable;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;

use crate::app_id::AppId;
use crate::bronze::{self, COL_COMMIT_TS, COL_LSN, COL_OP, META_PREFIX};
use crate::catalog::{History, OnViolation, SilverDef};
use crate::error::{Error, Result};
use crate::lake::{self, ident};
use crate::lsn::Lsn;

use super::change_log::{ChangeLog, Lookup};
use super::*;
use crate::expectations::{RuleCount, describe_key, evaluate_predicate, rule_error};
use crate::refine::Refiner;

impl Refiner<'_> {
    /// Read one slice of changes, reduce, check and MERGE it.
    pub(super) async fn apply_slice(
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
                ("medallion.lsn", Lsn::from_lake(hi).to_string().into()),
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
