//! `age(a, b)` and `age(a)` as Postgres computes them.
//!
//! Postgres subtracts two timestamps field by field (years, months, days,
//! then time), borrowing days from the month before the later one, so
//! `age('2024-03-31', '2024-02-29')` is `1 mon 2 days` and
//! `age('2025-01-01', '2024-12-31')` is `1 day` (`timestamp_age` in
//! `timestamp.c`; a negative day count borrows the days of the earlier
//! timestamp's month). DataFusion 55 has no `age`. This one returns Postgres'
//! interval as an Arrow `Interval(MonthDayNano)`: months = years · 12 +
//! months, days, and the time part in nanoseconds. `age(a)` is
//! `age(current_date, a)` in UTC, as Postgres with `TimeZone = 'UTC'`.
//!
//! Gold uses it inside expressions (`extract(year FROM age(d))`, a
//! comparison with an interval); an interval cannot be a stored column
//! (Delta has no interval type), which `super::stored_types` refuses with
//! what to write instead.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, IntervalMonthDayNanoBuilder};
use arrow::datatypes::{DataType, IntervalMonthDayNano, TimeUnit, TimestampMicrosecondType};
use chrono::{DateTime, Datelike, NaiveDateTime, Timelike};
use deltalake::datafusion::common::{Result as DfResult, exec_err, plan_err};
use deltalake::datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

pub(super) fn udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(Age {
        signature: Signature::user_defined(Volatility::Stable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Age {
    signature: Signature,
}

/// What both arguments are read as: a timestamp in microseconds (a date at
/// midnight; a `timestamptz` at its UTC time).
fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

fn days_in_month(year: i32, month: u32) -> i64 {
    let (y, m) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    chrono::NaiveDate::from_ymd_opt(y, m, 1)
        .and_then(|first| first.pred_opt())
        .map_or(31, |last| i64::from(last.day()))
}

/// While `low` is negative, borrow one `high` unit worth `base` lows.
fn borrow(low: &mut i64, high: &mut i64, base: i64) {
    while *low < 0 {
        *low += base;
        *high -= 1;
    }
}

/// Postgres' symbolic difference `t1 - t2` (`timestamp_age`).
fn age(t1: NaiveDateTime, t2: NaiveDateTime) -> IntervalMonthDayNano {
    let field = |a: i64, b: i64| a - b;
    let us = |t: &NaiveDateTime| i64::from(t.nanosecond() / 1000);
    let mut usec = field(us(&t1), us(&t2));
    let mut sec = field(i64::from(t1.second()), i64::from(t2.second()));
    let mut min = field(i64::from(t1.minute()), i64::from(t2.minute()));
    let mut hour = field(i64::from(t1.hour()), i64::from(t2.hour()));
    let mut mday = field(i64::from(t1.day()), i64::from(t2.day()));
    let mut mon = field(i64::from(t1.month()), i64::from(t2.month()));
    let mut year = field(i64::from(t1.year()), i64::from(t2.year()));
    let flip = t1 < t2;
    if flip {
        for f in [
            &mut usec, &mut sec, &mut min, &mut hour, &mut mday, &mut mon, &mut year,
        ] {
            *f = -*f;
        }
    }
    borrow(&mut usec, &mut sec, 1_000_000);
    borrow(&mut sec, &mut min, 60);
    borrow(&mut min, &mut hour, 60);
    borrow(&mut hour, &mut mday, 24);
    while mday < 0 {
        // The days of the earlier timestamp's month (Postgres borrows those).
        let earlier = if flip { t1 } else { t2 };
        let (y, m) = (earlier.year(), earlier.month());
        mday += days_in_month(y, m);
        mon -= 1;
    }
    borrow(&mut mon, &mut year, 12);
    let sign = if flip { -1 } else { 1 };
    let nanos = ((hour * 60 + min) * 60 + sec) * 1_000_000_000 + usec * 1000;
    IntervalMonthDayNano::new(
        (sign * (year * 12 + mon)) as i32,
        (sign * mday) as i32,
        sign * nanos,
    )
}

impl ScalarUDFImpl for Age {
    fn name(&self) -> &str {
        "age"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> DfResult<Vec<DataType>> {
        if args.is_empty() || args.len() > 2 {
            return plan_err!("age takes one or two timestamps or dates");
        }
        for a in args {
            match a {
                DataType::Date32
                | DataType::Date64
                | DataType::Timestamp(..)
                | DataType::Utf8
                | DataType::Utf8View
                | DataType::LargeUtf8
                | DataType::Null => {}
                other => return plan_err!("age of {other}: a timestamp or a date is expected"),
            }
        }
        Ok(vec![timestamp(); args.len()])
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Interval(
            arrow::datatypes::IntervalUnit::MonthDayNano,
        ))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.clone().into_array(n))
            .collect::<DfResult<_>>()?;
        let today = chrono::Utc::now()
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default();
        let value = |a: &ArrayRef, i: usize| -> DfResult<Option<NaiveDateTime>> {
            let a = a.as_primitive::<TimestampMicrosecondType>();
            if a.is_null(i) {
                return Ok(None);
            }
            match DateTime::from_timestamp_micros(a.value(i)) {
                Some(t) => Ok(Some(t.naive_utc())),
                None => exec_err!("age: timestamp {} out of range", a.value(i)),
            }
        };
        let mut out = IntervalMonthDayNanoBuilder::with_capacity(n);
        for i in 0..n {
            let (t1, t2) = match arrays.as_slice() {
                [b] => (Some(today), value(b, i)?),
                [a, b] => (value(a, i)?, value(b, i)?),
                _ => return exec_err!("age takes one or two arguments"),
            };
            match (t1, t2) {
                (Some(t1), Some(t2)) => out.append_value(age(t1, t2)),
                _ => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
            .or_else(|_| {
                chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default())
            })
            .unwrap()
    }

    fn pg(months: i32, days: i32, secs: i64) -> IntervalMonthDayNano {
        IntervalMonthDayNano::new(months, days, secs * 1_000_000_000)
    }

    /// Each expected value is what Postgres 15 prints for the same call.
    #[test]
    fn ages_equal_postgres() {
        // SELECT age('2024-03-31', '2024-02-29') → 1 mon 2 days
        assert_eq!(age(at("2024-03-31"), at("2024-02-29")), pg(1, 2, 0));
        // age('2025-01-01', '2024-12-31') → 1 day
        assert_eq!(age(at("2025-01-01"), at("2024-12-31")), pg(0, 1, 0));
        // age('2024-02-29', '2024-03-31') → -1 mons -2 days
        assert_eq!(age(at("2024-02-29"), at("2024-03-31")), pg(-1, -2, 0));
        // age('2024-03-01', '2024-01-31') → 1 mon 1 day (January's 31 days borrowed)
        assert_eq!(age(at("2024-03-01"), at("2024-01-31")), pg(1, 1, 0));
        // age('2025-03-01', '2024-01-31') → 1 year 1 mon 1 day
        assert_eq!(age(at("2025-03-01"), at("2024-01-31")), pg(13, 1, 0));
        // age('2024-01-01 10:00:00', '2023-12-31 23:30:00') → 10:30:00
        assert_eq!(
            age(at("2024-01-01 10:00:00"), at("2023-12-31 23:30:00")),
            pg(0, 0, 10 * 3600 + 30 * 60)
        );
        // age('2001-04-10', '1957-06-13') → 43 years 9 mons 27 days (Postgres' docs)
        assert_eq!(
            age(at("2001-04-10"), at("1957-06-13")),
            pg(43 * 12 + 9, 27, 0)
        );
    }
}
