//! One slice of bronze changes read, reduced, checked against the
//! expectations and applied to the silver table in one commit
//! ([`SilverStore::apply`]).

use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch, StringArray};
use deltalake::datafusion::prelude::SessionContext;

use crate::bronze::{COL_COMMIT_TS, COL_LSN, COL_OP, META_PREFIX};
use crate::catalog::{History, OnViolation, SilverDef};
use crate::error::{Error, Result};
use crate::lake;

use super::change_log::{ChangeLog, Lookup};
use super::store::{SilverStore, Slice};
use super::*;
use crate::expectations::{RuleCount, describe_key, evaluate_predicate, rule_error};
use crate::refine::Refiner;

impl Refiner<'_> {
    /// Read one slice of changes, reduce, check and apply it to `silver`.
    pub(super) async fn apply_slice(
        &self,
        def: &SilverDef,
        ctx: &SessionContext,
        silver: &mut impl SilverStore,
        lo: i64,
        hi: i64,
        report: &mut SilverReport,
    ) -> Result<()> {
        // Read unordered: the reduction visits the rows in (LSN, order)
        // order (`ChangeLog`), one sort of two integer columns, none when
        // bronze's files came back in order, instead of DataFusion sorting
        // every column per partition and merging them.
        let sql = format!(
            "SELECT * FROM b WHERE {COL_LSN} >= {lo} AND {COL_LSN} < {hi} AND {COL_OP} <> 'snapshot'"
        );
        let started = std::time::Instant::now();
        let batches = lake::collect(ctx, &sql).await?;
        let read = started.elapsed();
        let schema = match batches.first() {
            Some(b) => b.schema(),
            None => return Ok(()),
        };
        let changes = arrow::compute::concat_batches(&schema, &batches)
            .map_err(Error::arrow("concat changes"))?;
        drop(batches);
        report.rows_in += changes.num_rows() as u64;
        let log = ChangeLog::new(&changes, &def.keys, &format!("bronze {}", def.source))?;
        let lookup = if log.needs_lookup(def) {
            let rows = silver.current_rows(def, log.touched_keys()?).await?;
            Some(Lookup::new(rows, &def.keys, &log.data_fields)?)
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
        let reduced = started.elapsed();
        silver
            .apply(
                def,
                ctx,
                Slice {
                    source,
                    truncated,
                    data_fields: &log.data_fields,
                    hi,
                    changes: changes.num_rows() as u64,
                },
            )
            .await?;
        tracing::debug!(
            silver = %def.name,
            changes = changes.num_rows(),
            read_ms = read.as_millis() as u64,
            reduce_ms = (reduced - read).as_millis() as u64,
            apply_ms = (started.elapsed() - reduced).as_millis() as u64,
            "slice applied"
        );
        report.changed = true;
        Ok(())
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
