//! `date_trunc` with Postgres' result types.
//!
//! | argument        | Postgres      | DataFusion 55   | gold                    |
//! |-----------------|---------------|-----------------|-------------------------|
//! | `date`          | `timestamptz` | `timestamp(ns)` | `timestamptz` (µs, UTC) |
//! | untyped `'text'`| `timestamptz` | `timestamp(ns)` | `timestamptz` (µs, UTC) |
//! | timestamp(tz)   | same type     | same type       | same type and unit      |
//!
//! The sidecar's sessions run in UTC, so a date truncates to midnight UTC,
//! what Postgres gives with `TimeZone = 'UTC'`. Delta stores microseconds:
//! a nanosecond result would be converted with a "lossy timestamp
//! conversion" warning for every model. The truncation is DataFusion's.

use std::sync::Arc;

use arrow::datatypes::{DataType, FieldRef, TimeUnit};
use deltalake::datafusion::common::{Result as DfResult, internal_err, plan_err};
use deltalake::datafusion::functions::datetime::date_trunc::DateTruncFunc;
use deltalake::datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

/// `date_trunc` with Postgres' result types, as a UDF replacing DataFusion's.
pub(super) fn udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(DateTrunc::new())
}

/// The type a date or an untyped literal becomes for `date_trunc`:
/// Postgres resolves both to `timestamptz`.
fn timestamptz() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A timestamp in microseconds without a zone: what a date is truncated as.
fn naive() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

/// `date_trunc` with Postgres' result types; DataFusion truncates.
#[derive(Debug, PartialEq, Eq, Hash)]
struct DateTrunc {
    inner: DateTruncFunc,
    signature: Signature,
}

impl DateTrunc {
    fn new() -> Self {
        DateTrunc {
            inner: DateTruncFunc::new(),
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for DateTrunc {
    fn name(&self) -> &str {
        "date_trunc"
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> DfResult<Vec<DataType>> {
        let [unit, value] = args else {
            return plan_err!(
                "date_trunc takes a field name and a value, got {} arguments",
                args.len()
            );
        };
        let unit = match unit {
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => unit.clone(),
            DataType::Null => DataType::Utf8,
            other => return plan_err!("date_trunc: the field name must be text, not {other}"),
        };
        let value = match value {
            DataType::Timestamp(_, _) | DataType::Time32(_) | DataType::Time64(_) => value.clone(),
            // A date is truncated as a timestamp without time zone (midnight
            // UTC is the same instant) and labelled UTC afterwards: DataFusion
            // truncates zoned timestamps value by value through the zone
            // database, ~2× slower over a million rows than the whole query.
            DataType::Date32 | DataType::Date64 => DataType::Date32,
            DataType::Null | DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => {
                timestamptz()
            }
            other => {
                return plan_err!(
                    "date_trunc takes a date, timestamp, timestamptz or time, not {other}"
                );
            }
        };
        Ok(vec![unit, value])
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        internal_err!("return_field_from_args is called instead")
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        match args.arg_fields {
            [unit, value] if value.data_type() == &DataType::Date32 => {
                let naive: FieldRef = Arc::new(value.as_ref().clone().with_data_type(naive()));
                let fields = [Arc::clone(unit), naive];
                let inner = self.inner.return_field_from_args(ReturnFieldArgs {
                    arg_fields: &fields,
                    scalar_arguments: args.scalar_arguments,
                })?;
                Ok(Arc::new(
                    inner.as_ref().clone().with_data_type(timestamptz()),
                ))
            }
            _ => self.inner.return_field_from_args(args),
        }
    }

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let dates = args.arg_fields.get(1).map(|f| f.data_type()) == Some(&DataType::Date32);
        if !dates {
            return self.inner.invoke_with_args(args);
        }
        // Dates: truncate as naive timestamps, then label the result UTC.
        args.args[1] = args.args[1].cast_to(&naive(), None)?;
        args.arg_fields[1] = Arc::new(args.arg_fields[1].as_ref().clone().with_data_type(naive()));
        args.return_field = Arc::new(args.return_field.as_ref().clone().with_data_type(naive()));
        let utc = timestamptz();
        Ok(match self.inner.invoke_with_args(args)? {
            ColumnarValue::Array(a) => ColumnarValue::Array(arrow::compute::cast(&a, &utc)?),
            ColumnarValue::Scalar(v) => ColumnarValue::Scalar(v.cast_to(&utc)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Date32Array, RecordBatch, TimestampMicrosecondArray};
    use deltalake::datafusion::prelude::SessionContext;
    use std::sync::Arc;

    async fn one(ctx: &SessionContext, sql: &str) -> (DataType, String) {
        let batches = ctx.sql(sql).await.expect(sql).collect().await.expect(sql);
        let b = &batches[0];
        let c = b.column(0);
        (
            c.data_type().clone(),
            arrow::util::display::array_value_to_string(c, 0).expect("render"),
        )
    }

    /// Each case: the type and value Postgres 15 gives with TimeZone = UTC.
    #[tokio::test]
    async fn date_trunc_gives_postgres_types() {
        let ctx = crate::lake::session();
        let d = Date32Array::from(vec![Some(19_860), None]); // 2024-05-16
        let batch =
            RecordBatch::try_from_iter(vec![("d", Arc::new(d) as Arc<dyn Array>)]).expect("batch");
        ctx.register_batch("t", batch).expect("register");
        let utc = timestamptz();
        assert_eq!(
            one(&ctx, "SELECT date_trunc('month', d) FROM t").await,
            (utc.clone(), "2024-05-01T00:00:00Z".into())
        );
        assert_eq!(
            one(&ctx, "SELECT date_trunc('year', DATE '2024-05-16')").await,
            (utc.clone(), "2024-01-01T00:00:00Z".into())
        );
        // Silver's timestamps (µs, as Postgres keeps them) keep their type,
        // unit and zone (Postgres: timestamp → timestamp, timestamptz →
        // timestamptz).
        let at = 1_715_855_400_000_000; // 2024-05-16 10:30:00
        let ts = TimestampMicrosecondArray::from(vec![at]);
        let tz = TimestampMicrosecondArray::from(vec![at]).with_timezone("UTC");
        let batch = RecordBatch::try_from_iter(vec![
            ("ts", Arc::new(ts) as Arc<dyn Array>),
            ("tz", Arc::new(tz) as Arc<dyn Array>),
        ])
        .expect("batch");
        ctx.register_batch("s", batch).expect("register");
        assert_eq!(
            one(&ctx, "SELECT date_trunc('day', ts) FROM s").await,
            (
                DataType::Timestamp(TimeUnit::Microsecond, None),
                "2024-05-16T00:00:00".into()
            )
        );
        assert_eq!(
            one(&ctx, "SELECT date_trunc('hour', tz) FROM s").await,
            (utc.clone(), "2024-05-16T10:00:00Z".into())
        );
        // NULL in, NULL out.
        let batches = ctx
            .sql("SELECT date_trunc('month', d) FROM t")
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        assert!(batches[0].column(0).is_null(1));
        // Anything else is refused at planning with the types named.
        let Err(e) = ctx.sql("SELECT date_trunc('month', 42)").await else {
            panic!("an integer was taken for a date");
        };
        assert!(e.to_string().contains("not Int64"), "{e}");
    }
}
