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
//! conversion" warning for every model.
//!
//! A column of dates truncated to a day, week, month, quarter or year is
//! computed here from the day number alone ([`DateUnit`]). DataFusion
//! truncates every value through chrono's calendar and a time zone lookup,
//! about a quarter of a grouped-by-month model's time over a million rows.
//! Every other unit, a scalar, and a date whose midnight is not a
//! representable timestamp are DataFusion's.

use std::sync::Arc;

use arrow::array::{AsArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Date32Type, FieldRef, TimeUnit, TimestampMicrosecondType};
use arrow::error::ArrowError;
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

/// The zone gold labels a date's truncation with (its sessions run in UTC).
const UTC: &str = "UTC";

/// The type a date or an untyped literal becomes for `date_trunc`:
/// Postgres resolves both to `timestamptz`.
fn timestamptz() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
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
        if let (Some(unit), ColumnarValue::Array(dates)) =
            (DateUnit::of(&args.args[0]), &args.args[1])
            && let Some(dates) = dates.as_primitive_opt::<Date32Type>()
            && let Some(truncated) = unit.truncate(dates)
        {
            return Ok(ColumnarValue::Array(Arc::new(truncated.with_timezone(UTC))));
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

/// The units a date column is truncated to here, from its day number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DateUnit {
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

impl DateUnit {
    /// The unit a literal field name names (Postgres folds its case).
    fn of(unit: &ColumnarValue) -> Option<DateUnit> {
        let ColumnarValue::Scalar(unit) = unit else {
            return None;
        };
        let name = unit.try_as_str()??;
        [
            ("day", DateUnit::Day),
            ("week", DateUnit::Week),
            ("month", DateUnit::Month),
            ("quarter", DateUnit::Quarter),
            ("year", DateUnit::Year),
        ]
        .into_iter()
        .find_map(|(n, u)| name.eq_ignore_ascii_case(n).then_some(u))
    }

    /// The first day of the unit holding day `days` (days since 1970-01-01).
    fn first_day(self, days: i64) -> i64 {
        match self {
            DateUnit::Day => days,
            // 1970-01-01 was a Thursday; weeks start on Monday (ISO, Postgres).
            DateUnit::Week => days - (days + 3).rem_euclid(7),
            DateUnit::Month => {
                let (_, _, day) = civil_from_days(days);
                days - (i64::from(day) - 1)
            }
            DateUnit::Quarter => {
                let (year, month, _) = civil_from_days(days);
                days_from_civil(year, (month - 1) / 3 * 3 + 1, 1)
            }
            DateUnit::Year => days_from_civil(civil_from_days(days).0, 1, 1),
        }
    }

    /// Midnight UTC of each date's first day, in microseconds; `None` when a
    /// result is not a representable timestamp (the general path reports it).
    fn truncate(self, dates: &arrow::array::Date32Array) -> Option<TimestampMicrosecondArray> {
        dates
            .try_unary::<_, TimestampMicrosecondType, _>(|d| {
                self.first_day(i64::from(d))
                    .checked_mul(MICROS_PER_DAY)
                    .ok_or(ArrowError::ComputeError(String::new()))
            })
            .ok()
    }
}

/// (year, month 1–12, day 1–31) of a day number, proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The day number of a (year, month, day), proleptic Gregorian (Howard
/// Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let month = i64::from(month);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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

#[cfg(test)]
mod date_unit_tests {
    use super::*;
    use arrow::array::{Array, Date32Array, RecordBatch, TimestampNanosecondArray};
    use chrono::{Datelike, NaiveDate};
    use deltalake::datafusion::prelude::SessionContext;

    /// Every day from 1700 to 2250 (the range of DataFusion's nanosecond
    /// timestamps), with NULLs among them.
    fn days() -> Date32Array {
        let first = days_from_civil(1700, 1, 1) as i32;
        let last = days_from_civil(2250, 12, 31) as i32;
        (first..=last).map(|d| (d % 97 != 0).then_some(d)).collect()
    }

    /// The fast path gives what DataFusion's own `date_trunc` gives for the
    /// same dates as timestamps, unit by unit, NULLs kept.
    #[tokio::test]
    async fn a_date_column_truncates_as_datafusion_does() {
        let dates = days();
        // DataFusion's date_trunc, not ours; one partition keeps the order.
        let ctx = SessionContext::new_with_config(
            deltalake::datafusion::prelude::SessionConfig::new().with_target_partitions(1),
        );
        let batch =
            RecordBatch::try_from_iter(vec![("d", Arc::new(dates.clone()) as _)]).expect("batch");
        ctx.register_batch("t", batch).expect("register");
        for (name, unit) in [
            ("day", DateUnit::Day),
            ("week", DateUnit::Week),
            ("month", DateUnit::Month),
            ("quarter", DateUnit::Quarter),
            ("year", DateUnit::Year),
        ] {
            let theirs = ctx
                .sql(&format!(
                    "SELECT date_trunc('{name}', CAST(d AS TIMESTAMP)) FROM t"
                ))
                .await
                .expect("plan")
                .collect()
                .await
                .expect("run");
            let theirs: Vec<Option<i64>> = theirs
                .iter()
                .flat_map(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<TimestampNanosecondArray>()
                        .expect("ns")
                        .iter()
                        .map(|v| v.map(|ns| ns / 1_000))
                        .collect::<Vec<_>>()
                })
                .collect();
            let ours: Vec<Option<i64>> = unit.truncate(&dates).expect("in range").iter().collect();
            assert_eq!(ours.len(), theirs.len(), "{name}");
            if let Some(i) = (0..ours.len()).find(|&i| ours[i] != theirs[i]) {
                panic!(
                    "{name} of day {:?}: ours {:?}, DataFusion's {:?}",
                    dates.is_valid(i).then(|| dates.value(i)),
                    ours[i],
                    theirs[i]
                );
            }
            assert_eq!(
                ours.iter().filter(|v| v.is_none()).count(),
                dates.null_count()
            );
        }
    }

    /// The calendar arithmetic agrees with chrono far outside that range,
    /// before year 1 included.
    #[test]
    fn the_calendar_holds_far_from_today() {
        for year in [-4_713, -1, 0, 1, 1_582, 99_999, 200_000] {
            for month in 1..=12 {
                let date = NaiveDate::from_ymd_opt(year, month, 17).expect("date");
                let days = i64::from(date.num_days_from_ce()) - 719_163;
                assert_eq!(days_from_civil(i64::from(year), month, 17), days);
                assert_eq!(civil_from_days(days), (i64::from(year), month, 17));
                let first = |d: NaiveDate| i64::from(d.num_days_from_ce()) - 719_163;
                let q = NaiveDate::from_ymd_opt(year, (month - 1) / 3 * 3 + 1, 1).expect("q");
                let w =
                    date - chrono::Duration::days(i64::from(date.weekday().num_days_from_monday()));
                assert_eq!(
                    DateUnit::Month.first_day(days),
                    first(date.with_day(1).expect("m"))
                );
                assert_eq!(DateUnit::Quarter.first_day(days), first(q));
                assert_eq!(
                    DateUnit::Year.first_day(days),
                    first(date.with_ordinal(1).expect("y"))
                );
                assert_eq!(DateUnit::Week.first_day(days), first(w));
            }
        }
    }

    /// A date whose midnight is past the last timestamp is left to the
    /// general path (which reports it); field names fold their case; other
    /// units are not taken.
    #[test]
    fn what_the_fast_path_leaves_to_datafusion() {
        let far = days_from_civil(300_000, 6, 1) as i32;
        assert!(
            DateUnit::Month
                .truncate(&Date32Array::from(vec![far]))
                .is_none()
        );
        let unit = |s: &str| DateUnit::of(&ColumnarValue::Scalar(s.into()));
        assert_eq!(unit("MONTH"), Some(DateUnit::Month));
        assert_eq!(unit("Quarter"), Some(DateUnit::Quarter));
        assert_eq!(unit("hour"), None);
        assert_eq!(unit("decade"), None);
    }
}
