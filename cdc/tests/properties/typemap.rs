//! Text values (as pgoutput and COPY send them) into Arrow columns.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    Date32Type, Decimal128Type, Float64Type, Int16Type, Int32Type, Int64Type,
    TimestampMicrosecondType,
};
use chrono::{Datelike, NaiveDate, NaiveDateTime};
use medallion::typemap::{ColumnBuilder, Kind, map_type, parse_array};
use proptest::prelude::*;

/// Every kind the type map produces: scalars, decimals of any valid
/// precision and scale, and one-dimensional arrays of scalars.
fn scalar_kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Bool),
        Just(Kind::Int16),
        Just(Kind::Int32),
        Just(Kind::Int64),
        Just(Kind::Float32),
        Just(Kind::Float64),
        (1u8..=38)
            .prop_flat_map(|p| (Just(p), 0..=p as i8))
            .prop_map(|(precision, scale)| Kind::Decimal { precision, scale }),
        Just(Kind::Text),
        Just(Kind::Binary),
        Just(Kind::Date),
        Just(Kind::Timestamp),
        Just(Kind::TimestampTz),
    ]
}

pub(crate) fn any_kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => scalar_kind(),
        1 => scalar_kind().prop_map(|k| Kind::List(Box::new(k))),
    ]
}

/// Bytes that look like Postgres text of some type (so parsers get past
/// their first character), or anything at all.
pub(crate) fn value_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<Vec<u8>>(),
        "-?[0-9]{0,40}(\\.[0-9]{0,40})?(e[+-]?[0-9]{1,4})?".prop_map(String::into_bytes),
        "[0-9]{1,7}-[0-9]{1,2}-[0-9]{1,2}( BC)?".prop_map(String::into_bytes),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?([+-][0-9]{1,2}(:[0-9]{2}(:[0-9]{2})?)?)?( BC)?"
            .prop_map(String::into_bytes),
        "\\\\x[0-9a-fA-F]{0,16}".prop_map(String::into_bytes),
        "\\{([^{}]{0,6}(,|\\}|\\{|\"|\\\\)){0,6}".prop_map(String::into_bytes),
        "(t|f|true|false|NaN|-?Infinity|infinity|NULL)".prop_map(String::into_bytes),
        "\\PC{0,12}".prop_map(String::into_bytes),
    ]
}

/// Append `values` to a column of `kind`: never a panic; every refused
/// value leaves nothing behind, so the column holds exactly the accepted ones.
fn append_all(kind: &Kind, values: &[Option<Vec<u8>>]) -> Result<(), TestCaseError> {
    let mut b = ColumnBuilder::new(kind);
    let mut kept = 0;
    for v in values {
        match v {
            None => {
                b.append_null();
                kept += 1;
            }
            Some(raw) => {
                if b.append_text(raw).is_ok() {
                    kept += 1;
                }
            }
        }
    }
    let array = b.finish();
    prop_assert_eq!(array.len(), kept);
    prop_assert_eq!(array.data_type(), &kind.arrow_type());
    Ok(())
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn any_text_into_any_column_is_a_value_or_an_error(
        kind in any_kind(),
        values in prop::collection::vec(prop::option::weighted(0.9, value_bytes()), 0..24),
    ) {
        append_all(&kind, &values)?;
    }

    #[test]
    fn the_type_map_gives_a_buildable_kind_for_any_type(
        oid in prop_oneof![0u32..4_000, any::<u32>()],
        typmod in prop_oneof![-1i32..=1, any::<i32>(), (0i32..=40, 0i32..=40).prop_map(|(p, s)| ((p << 16) | s) + 4)],
        scale in 0i8..=38,
    ) {
        let kind = map_type(oid, typmod, scale).kind;
        let mut b = ColumnBuilder::new(&kind);
        b.append_null();
        let array = b.finish();
        prop_assert_eq!(array.data_type(), &kind.arrow_type());
    }

    #[test]
    fn integers_round_trip(a in any::<i16>(), b in any::<i32>(), c in any::<i64>()) {
        let mut col = ColumnBuilder::new(&Kind::Int16);
        col.append_text(a.to_string().as_bytes()).unwrap();
        prop_assert_eq!(col.finish().as_primitive::<Int16Type>().value(0), a);
        let mut col = ColumnBuilder::new(&Kind::Int32);
        col.append_text(b.to_string().as_bytes()).unwrap();
        prop_assert_eq!(col.finish().as_primitive::<Int32Type>().value(0), b);
        let mut col = ColumnBuilder::new(&Kind::Int64);
        col.append_text(c.to_string().as_bytes()).unwrap();
        prop_assert_eq!(col.finish().as_primitive::<Int64Type>().value(0), c);
        // One past the range is refused, not wrapped.
        let mut col = ColumnBuilder::new(&Kind::Int16);
        prop_assert!(col.append_text((i16::MAX as i32 + 1).to_string().as_bytes()).is_err());
    }

    #[test]
    fn floats_round_trip(f in any::<f64>()) {
        // Postgres prints the shortest text that reads back exactly, and
        // NaN / Infinity / -Infinity by name.
        let text = if f.is_nan() {
            "NaN".to_string()
        } else if f.is_infinite() {
            if f > 0.0 { "Infinity".into() } else { "-Infinity".into() }
        } else {
            format!("{f:e}")
        };
        let mut col = ColumnBuilder::new(&Kind::Float64);
        col.append_text(text.as_bytes()).unwrap();
        let got = col.finish().as_primitive::<Float64Type>().value(0);
        prop_assert!(got == f || (got.is_nan() && f.is_nan()), "{text} read as {got}");
    }

    #[test]
    fn decimals_round_trip_or_are_refused_when_they_would_round(
        (precision, scale, mantissa) in (1u8..=38).prop_flat_map(|p| (Just(p), 0..=p as i8)).prop_flat_map(|(p, s)| {
            let max = 10i128.pow(p as u32) - 1;
            (Just(p), Just(s), -max..=max)
        }),
        extra_zeros in 0usize..4,
        extra_digit in 1u8..=9,
    ) {
        let digits = mantissa.unsigned_abs().to_string();
        let s = scale as usize;
        let padded = format!("{digits:0>width$}", width = s + 1);
        let (int, frac) = padded.split_at(padded.len() - s);
        let sign = if mantissa < 0 { "-" } else { "" };
        let mut text = if s == 0 { format!("{sign}{int}") } else { format!("{sign}{int}.{frac}") };
        let kind = Kind::Decimal { precision, scale };
        // Trailing zeros beyond the scale lose nothing.
        if extra_zeros > 0 {
            if s == 0 { text.push('.'); }
            text.push_str(&"0".repeat(extra_zeros));
        }
        let mut col = ColumnBuilder::new(&kind);
        col.append_text(text.as_bytes()).unwrap();
        prop_assert_eq!(col.finish().as_primitive::<Decimal128Type>().value(0), mantissa, "{}", text);
        // A non-zero digit beyond the scale would round: refused.
        let mut rounding = text.clone();
        if !rounding.contains('.') { rounding.push('.'); }
        if s > 0 || extra_zeros > 0 || rounding.ends_with('.') {
            let pad = s.saturating_sub(rounding.split('.').nth(1).map_or(0, str::len));
            rounding.push_str(&"0".repeat(pad));
            rounding.push(char::from(b'0' + extra_digit));
            let mut col = ColumnBuilder::new(&kind);
            prop_assert!(col.append_text(rounding.as_bytes()).is_err(), "{} accepted", rounding);
        }
    }

    #[test]
    fn dates_round_trip_ad_and_bc(days in -2_400_000i64..2_900_000) {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        let d = epoch + chrono::Duration::days(days);
        let text = if d.year() <= 0 {
            format!("{:04}-{:02}-{:02} BC", 1 - d.year(), d.month(), d.day())
        } else {
            format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
        };
        let mut col = ColumnBuilder::new(&Kind::Date);
        col.append_text(text.as_bytes()).unwrap();
        prop_assert_eq!(col.finish().as_primitive::<Date32Type>().value(0) as i64, days, "{}", text);
    }

    #[test]
    fn timestamptz_round_trips_at_any_offset(
        micros in 0i64..253_402_300_799_999_999, // 0001-01-01 .. 9999-12-31 (µs since 0001)
        offset_s in -(15i32 * 3600 + 59 * 60 + 59)..=(15 * 3600 + 59 * 60 + 59),
    ) {
        let base = NaiveDate::from_ymd_opt(1, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap();
        let utc: NaiveDateTime = base + chrono::Duration::microseconds(micros);
        let local = utc + chrono::Duration::seconds(offset_s as i64);
        prop_assume!(local.year() >= 1 && local.year() <= 9999);
        let sign = if offset_s < 0 { '-' } else { '+' };
        let o = offset_s.unsigned_abs();
        let (h, m, s) = (o / 3600, o / 60 % 60, o % 60);
        // Postgres prints +HH, +HH:MM or +HH:MM:SS, whichever is exact.
        let zone = match (m, s) {
            (0, 0) => format!("{sign}{h:02}"),
            (_, 0) => format!("{sign}{h:02}:{m:02}"),
            _ => format!("{sign}{h:02}:{m:02}:{s:02}"),
        };
        let text = format!("{}{zone}", local.format("%Y-%m-%d %H:%M:%S%.6f"));
        let mut col = ColumnBuilder::new(&Kind::TimestampTz);
        col.append_text(text.as_bytes()).unwrap();
        let expected = (utc - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap())
            .num_microseconds()
            .unwrap();
        prop_assert_eq!(
            col.finish().as_primitive::<TimestampMicrosecondType>().value(0),
            expected,
            "{}", text
        );
    }

    #[test]
    fn bytea_hex_round_trips(bytes in any::<Vec<u8>>()) {
        let text: String = std::iter::once("\\x".to_string())
            .chain(bytes.iter().map(|b| format!("{b:02x}")))
            .collect();
        let mut col = ColumnBuilder::new(&Kind::Binary);
        col.append_text(text.as_bytes()).unwrap();
        let array = col.finish();
        prop_assert_eq!(array.as_binary::<i32>().value(0), bytes.as_slice());
    }

    #[test]
    fn text_arrays_round_trip(elems in prop::collection::vec(prop::option::of("\\PC{0,8}"), 0..8)) {
        // array_out: every element quoted here (always valid), `"` and `\`
        // escaped, NULL bare.
        let parts: Vec<String> = elems
            .iter()
            .map(|e| match e {
                None => "NULL".into(),
                Some(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
            })
            .collect();
        let text = format!("{{{}}}", parts.join(","));
        prop_assert_eq!(parse_array(&text).unwrap(), elems);
    }
}

/// Hand-picked inputs (`corpus/values.txt`: `<kind> <text>` per line, with
/// `\n`-free Rust escapes) that every run feeds to their column.
#[test]
fn the_corpus_of_edge_values_never_panics() {
    let corpus = include_str!("corpus/values.txt");
    let mut n = 0;
    for line in corpus
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (kind, text) = line.split_once(' ').unwrap_or((line, ""));
        let kind = match kind {
            "bool" => Kind::Bool,
            "int2" => Kind::Int16,
            "int4" => Kind::Int32,
            "int8" => Kind::Int64,
            "float4" => Kind::Float32,
            "float8" => Kind::Float64,
            "numeric" => Kind::Decimal {
                precision: 38,
                scale: 24,
            },
            "numeric(5,2)" => Kind::Decimal {
                precision: 5,
                scale: 2,
            },
            "numeric(38,38)" => Kind::Decimal {
                precision: 38,
                scale: 38,
            },
            "text" => Kind::Text,
            "bytea" => Kind::Binary,
            "date" => Kind::Date,
            "timestamp" => Kind::Timestamp,
            "timestamptz" => Kind::TimestampTz,
            "int4[]" => Kind::List(Box::new(Kind::Int32)),
            "text[]" => Kind::List(Box::new(Kind::Text)),
            "numeric[]" => Kind::List(Box::new(Kind::Decimal {
                precision: 38,
                scale: 24,
            })),
            other => panic!("corpus: unknown kind {other}"),
        };
        let text = text.replace("\\t", "\t").replace("\\0", "\0");
        let mut b = ColumnBuilder::new(&kind);
        let ok = b.append_text(text.as_bytes()).is_ok();
        assert_eq!(b.finish().len(), usize::from(ok), "{line}");
        n += 1;
    }
    assert!(n > 40, "the corpus has {n} entries");
}
