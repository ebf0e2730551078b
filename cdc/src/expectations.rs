//! Expectations: the rules a silver table's or gold model's rows are
//! checked against (`warn` counts, `drop` quarantines, `fail` stops the
//! table), shared by both layers, and the quarantine tables dropped rows go to.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::datafusion::prelude::SessionContext;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;

use crate::app_id::AppId;
use crate::catalog::Expectation;
use crate::error::{Error, Result};
use crate::lake;

use crate::refine::Refiner;

/// Violations of one expectation in one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RuleCount {
    pub on_violation: &'static str,
    pub failed: u64,
}

const COL_RULE: &str = "_mdl_rule";

impl Refiner<'_> {
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
        let url = self.lake.refined_url("quarantine", name)?;
        let app = AppId::Quarantine { table: name, rule }.to_string();
        let existing = self.lake.open(&url).await?;
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
            None => self.lake.handle(&url)?,
        };
        let written = table
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
        lake::after_commit(&written, &url);
        Ok(())
    }
}

pub(crate) fn rule_error(name: &str, e: &Expectation, err: Error) -> Error {
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
}
