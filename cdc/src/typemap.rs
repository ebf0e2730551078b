//! Postgres types → Delta/Arrow types, and text values → Arrow arrays.
//!
//! Both pgoutput (text mode) and the snapshot's `COPY … TO STDOUT` deliver
//! values in Postgres's text output format, so one decoder serves both.
//!
//! | Postgres | bronze (Arrow / Delta) |
//! |---|---|
//! | bool | Boolean / boolean |
//! | int2, int4, int8, oid | Int16, Int32, Int64, Int64 |
//! | float4, float8 | Float32, Float64 (NaN and ±Infinity kept) |
//! | numeric(p,s), p ≤ 38 | Decimal128(p,s) |
//! | numeric (unconstrained, Odoo money) | Decimal128(38, `numeric_scale`, default 24) |
//! | numeric(p,s), p > 38 | Utf8 (exact text) |
//! | text, varchar, bpchar, name, char | Utf8 |
//! | bytea | Binary |
//! | date | Date32 |
//! | timestamp | Timestamp(µs) — Delta `timestamp_ntz` |
//! | timestamptz | Timestamp(µs, UTC) — Delta `timestamp` |
//! | json, jsonb, uuid, interval, inet, cidr, macaddr, time, timetz, money, enums, xml | Utf8 (Postgres's own text: lossless) |
//! | one-dimensional arrays of the types above | List of the element type |
//! | anything else | Utf8, with a warning at first sight |
//!
//! Never rounded or truncated: a value that does not fit (numeric with more
//! fractional digits than the scale, NaN numeric, `infinity` dates, a
//! multi-dimensional array) is an [`Error::Value`] naming table, column and value.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder, ListBuilder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, TimeUnit};
use chrono::{NaiveDate, NaiveDateTime};

use crate::error::Error;

pub mod binary;

/// Postgres type OIDs we map specially.
mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const CIDR: u32 = 650;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const MONEY: u32 = 790;
    pub const MACADDR: u32 = 829;
    pub const INET: u32 = 869;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
    pub const MACADDR8: u32 = 774;

    /// Array OID → element OID for the arrays we decode as lists.
    pub fn array_element(array_oid: u32) -> Option<u32> {
        Some(match array_oid {
            1000 => BOOL,
            1001 => BYTEA,
            1005 => INT2,
            1007 => INT4,
            1016 => INT8,
            1009 => TEXT,
            1014 => BPCHAR,
            1015 => VARCHAR,
            1021 => FLOAT4,
            1022 => FLOAT8,
            1231 => NUMERIC,
            1182 => DATE,
            1115 => TIMESTAMP,
            1185 => TIMESTAMPTZ,
            2951 => UUID,
            199 => JSON,
            3807 => JSONB,
            1028 => OID,
            _ => return None,
        })
    }
}

/// How a Postgres column is stored in bronze.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Decimal { precision: u8, scale: i8 },
    Text,
    Binary,
    Date,
    Timestamp,
    TimestampTz,
    List(Box<Kind>),
}

/// What the type map decided for a column, and whether it was a fallback
/// for a type we do not know (worth a warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub kind: Kind,
    pub unknown_type: bool,
}

/// Map a Postgres type (OID + typmod) to its bronze kind. `unconstrained_scale`
/// is the scale used for numeric without a declared precision.
pub fn map_type(type_oid: u32, typmod: i32, unconstrained_scale: i8) -> Mapping {
    let known = |kind| Mapping {
        kind,
        unknown_type: false,
    };
    match type_oid {
        oid::BOOL => known(Kind::Bool),
        oid::INT2 => known(Kind::Int16),
        oid::INT4 => known(Kind::Int32),
        oid::INT8 | oid::OID => known(Kind::Int64),
        oid::FLOAT4 => known(Kind::Float32),
        oid::FLOAT8 => known(Kind::Float64),
        oid::NUMERIC => {
            if typmod < 4 {
                known(Kind::Decimal {
                    precision: 38,
                    scale: unconstrained_scale,
                })
            } else {
                let t = typmod - 4;
                let precision = ((t >> 16) & 0xffff) as u32;
                let scale = t & 0x7ff;
                let scale = if scale > 1000 { scale - 2048 } else { scale };
                if precision <= 38 && (0..=precision as i32).contains(&scale) {
                    known(Kind::Decimal {
                        precision: precision as u8,
                        scale: scale as i8,
                    })
                } else {
                    known(Kind::Text)
                }
            }
        }
        oid::TEXT
        | oid::VARCHAR
        | oid::BPCHAR
        | oid::NAME
        | oid::CHAR
        | oid::JSON
        | oid::JSONB
        | oid::UUID
        | oid::INTERVAL
        | oid::INET
        | oid::CIDR
        | oid::MACADDR
        | oid::MACADDR8
        | oid::TIME
        | oid::TIMETZ
        | oid::MONEY
        | oid::XML => known(Kind::Text),
        oid::BYTEA => known(Kind::Binary),
        oid::DATE => known(Kind::Date),
        oid::TIMESTAMP => known(Kind::Timestamp),
        oid::TIMESTAMPTZ => known(Kind::TimestampTz),
        other => match oid::array_element(other) {
            Some(elem) => {
                let inner = map_type(elem, -1, unconstrained_scale);
                known(Kind::List(Box::new(inner.kind)))
            }
            None => Mapping {
                kind: Kind::Text,
                unknown_type: true,
            },
        },
    }
}

/// Whether `oid` names a type whose lossless text fallback needs no warning
/// (user enums and domains over text are looked up by the caller).
pub fn is_builtin(type_oid: u32) -> bool {
    type_oid < 10_000
}

impl Kind {
    pub fn arrow_type(&self) -> DataType {
        match self {
            Kind::Bool => DataType::Boolean,
            Kind::Int16 => DataType::Int16,
            Kind::Int32 => DataType::Int32,
            Kind::Int64 => DataType::Int64,
            Kind::Float32 => DataType::Float32,
            Kind::Float64 => DataType::Float64,
            Kind::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
            Kind::Text => DataType::Utf8,
            Kind::Binary => DataType::Binary,
            Kind::Date => DataType::Date32,
            Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Kind::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::List(inner) => {
                DataType::List(Arc::new(Field::new("element", inner.arrow_type(), true)))
            }
        }
    }

    /// The kind an existing bronze column of `dt` has (to resume a table).
    pub fn from_arrow(dt: &DataType) -> Option<Kind> {
        Some(match dt {
            DataType::Boolean => Kind::Bool,
            DataType::Int16 => Kind::Int16,
            DataType::Int32 => Kind::Int32,
            DataType::Int64 => Kind::Int64,
            DataType::Float32 => Kind::Float32,
            DataType::Float64 => Kind::Float64,
            // A Delta table someone else wrote may hold any decimal; only
            // one Arrow can build is a kind (never a panic later).
            DataType::Decimal128(p, s) if (1..=38).contains(p) && *s >= 0 && (*s as u8) <= *p => {
                Kind::Decimal {
                    precision: *p,
                    scale: *s,
                }
            }
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Kind::Text,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Kind::Binary,
            DataType::Date32 => Kind::Date,
            DataType::Timestamp(TimeUnit::Microsecond, None) => Kind::Timestamp,
            DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => Kind::TimestampTz,
            DataType::List(f) | DataType::LargeList(f) => {
                Kind::List(Box::new(Kind::from_arrow(f.data_type())?))
            }
            _ => return None,
        })
    }
}

/// Why a text value did not decode.
#[derive(Debug, PartialEq)]
pub struct ValueError(pub String);

type VResult<T> = Result<T, ValueError>;

fn utf8(v: &[u8]) -> VResult<&str> {
    std::str::from_utf8(v).map_err(|_| ValueError("not valid UTF-8".into()))
}

/// Parse Postgres numeric text into an i128 scaled by `scale`, refusing any
/// loss: extra fractional digits must be zeros, total digits ≤ precision.
pub fn parse_decimal(s: &str, precision: u8, scale: i8) -> VResult<i128> {
    match plain_decimal(s.as_bytes(), precision, scale) {
        Some(v) => Ok(v),
        None => general_decimal(s, precision, scale),
    }
}

/// [`parse_decimal`] of any text: surrounding white space, a `+`, and the
/// reason a value is refused.
fn general_decimal(s: &str, precision: u8, scale: i8) -> VResult<i128> {
    let s = s.trim();
    let (neg, body) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int_part, frac_part) = body.split_once('.').unwrap_or((body, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        if s.eq_ignore_ascii_case("nan") || s.contains("inf") || s.contains("Inf") {
            return Err(ValueError(format!("{s} has no decimal representation")));
        }
        return Err(ValueError(format!("{s:?} is not a number")));
    }
    let scale = scale.max(0) as usize;
    let (kept, dropped) = if frac_part.len() > scale {
        frac_part.split_at(scale)
    } else {
        (frac_part, "")
    };
    if dropped.bytes().any(|b| b != b'0') {
        return Err(ValueError(format!(
            "{} fractional digits exceed scale {scale} (would round)",
            frac_part.trim_end_matches('0').len()
        )));
    }
    let int_digits = int_part.trim_start_matches('0');
    if int_digits.len() + scale > precision as usize {
        return Err(ValueError(format!(
            "{} integer digits exceed precision {precision} with scale {scale}",
            int_digits.len()
        )));
    }
    let mut v: i128 = 0;
    for b in int_digits.bytes().chain(kept.bytes()) {
        v = v * 10 + (b - b'0') as i128;
    }
    for _ in kept.len()..scale {
        v *= 10;
    }
    Ok(if neg { -v } else { v })
}

/// 10^k for k ≤ 38.
const POW10: [i128; 39] = {
    let mut t = [1i128; 39];
    let mut k = 1;
    while k < 39 {
        t[k] = t[k - 1] * 10;
        k += 1;
    }
    t
};

/// [`parse_decimal`] of numeric text as Postgres prints it (`-`, digits, an
/// optional `.` and digits) whose value fits without rounding: one pass over
/// the bytes. None for anything else, which the general path then parses
/// or refuses with its reason.
fn plain_decimal(b: &[u8], precision: u8, scale: i8) -> Option<i128> {
    let scale = scale.max(0) as usize;
    let (neg, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, b),
    };
    // Up to 18 digits accumulate in a u64; more in an i128.
    let mut small: u64 = 0;
    let mut wide: i128 = 0;
    let mut taken = 0usize;
    let mut int_digits = 0usize;
    let mut frac_digits = 0usize;
    let mut in_frac = false;
    let mut any = false;
    for &c in digits {
        match c {
            b'0'..=b'9' => {
                any = true;
                if in_frac {
                    frac_digits += 1;
                    if frac_digits > scale {
                        if c != b'0' {
                            return None;
                        }
                        continue;
                    }
                } else if int_digits == 0 && c == b'0' {
                    // Leading zeros count towards nothing.
                    continue;
                } else {
                    int_digits += 1;
                }
                let d = c - b'0';
                if taken < 18 {
                    small = small * 10 + d as u64;
                } else {
                    if taken == 18 {
                        wide = small as i128;
                    }
                    wide = wide.checked_mul(10)?.checked_add(d as i128)?;
                }
                taken += 1;
            }
            b'.' if !in_frac => in_frac = true,
            _ => return None,
        }
    }
    if !any || int_digits + scale > precision as usize {
        return None;
    }
    let v = if taken <= 18 { small as i128 } else { wide };
    let v = v.checked_mul(*POW10.get(scale - frac_digits.min(scale))?)?;
    Some(if neg { -v } else { v })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Some(v)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Fast path for `YYYY-MM-DD`; None for anything else (BC, 5-digit years…).
fn fast_date(b: &[u8]) -> Option<i64> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (
        digits(&b[0..4])? as i64,
        digits(&b[5..7])?,
        digits(&b[8..10])?,
    );
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// Fast path for `YYYY-MM-DD HH:MM:SS[.f{1,6}]` → µs since the epoch.
fn fast_timestamp(b: &[u8]) -> Option<i64> {
    if b.len() < 19 || b[10] != b' ' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let days = fast_date(&b[..10])?;
    let (h, mi, se) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    if h > 23 || mi > 59 || se > 59 {
        return None;
    }
    let mut us = 0i64;
    if b.len() > 19 {
        let frac = &b[20..];
        if b[19] != b'.' || frac.is_empty() || frac.len() > 6 {
            return None;
        }
        us = digits(frac)? as i64 * 10i64.pow(6 - frac.len() as u32);
    }
    Some(((days * 86_400 + (h * 3600 + mi * 60 + se) as i64) * 1_000_000) + us)
}

fn parse_date(s: &str) -> VResult<i32> {
    if let Some(d) = fast_date(s.as_bytes()) {
        return Ok(d as i32);
    }
    let text = astronomical(s);
    let d = NaiveDate::parse_from_str(&text, "%Y-%m-%d").map_err(|_| {
        ValueError(format!(
            "{s:?} is not an ISO date (infinity has no Delta date)"
        ))
    })?;
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
    Ok((d - epoch).num_days() as i32)
}

fn parse_naive_ts(s: &str) -> VResult<NaiveDateTime> {
    let text = astronomical(s);
    NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f").map_err(|_| {
        ValueError(format!(
            "{s:?} is not an ISO timestamp (infinity has no Delta timestamp)"
        ))
    })
}

/// Postgres prints years before 1 AD as `YYYY-… BC`; year 1 BC is
/// astronomical year 0, 2 BC is -1. The year is rewritten before parsing,
/// so a BC leap day (29 February 2941 BC: astronomical -2940, a leap year)
/// is read in its own calendar year, not in the AD year of the same number.
fn astronomical(s: &str) -> std::borrow::Cow<'_, str> {
    let Some(ad) = s.strip_suffix(" BC") else {
        return s.into();
    };
    match ad.split_once('-') {
        Some((year, rest)) if !year.is_empty() && year.bytes().all(|b| b.is_ascii_digit()) => {
            match year.parse::<i64>() {
                Ok(y) if y >= 1 => {
                    let a = 1 - y;
                    if a < 0 {
                        format!("-{:04}-{rest}", -a).into()
                    } else {
                        format!("{a:04}-{rest}").into()
                    }
                }
                // Year 0 BC does not exist: let the parser refuse it.
                _ => format!("x{ad}").into(),
            }
        }
        _ => format!("x{ad}").into(),
    }
}

fn parse_timestamp(s: &str) -> VResult<i64> {
    if let Some(us) = fast_timestamp(s.as_bytes()) {
        return Ok(us);
    }
    Ok(parse_naive_ts(s)?.and_utc().timestamp_micros())
}

/// timestamptz text: `2025-01-01 08:00:00.123+01` (offset ±HH[:MM[:SS]]).
fn parse_timestamptz(s: &str) -> VResult<i64> {
    let (body, bc) = match s.strip_suffix(" BC") {
        Some(r) => (r, true),
        None => (s, false),
    };
    let pos = body
        .rfind(['+', '-'])
        .filter(|&p| p > 10)
        .ok_or_else(|| ValueError(format!("{s:?} has no UTC offset")))?;
    let (ts, off) = body.split_at(pos);
    let sign = if off.starts_with('-') { -1 } else { 1 };
    let mut parts = off[1..].split(':');
    let mut secs = 0i64;
    for (mult, max) in [(3600, 15), (60, 59), (1, 59)] {
        if let Some(p) = parts.next() {
            // Postgres offsets are within ±15:59:59: anything else is an
            // error, never an overflow.
            let n: i64 = p
                .parse()
                .ok()
                .filter(|n| (0..=max).contains(n))
                .ok_or_else(|| ValueError(format!("{s:?}: bad offset")))?;
            secs += n * mult;
        }
    }
    let local = if bc {
        parse_naive_ts(&format!("{ts} BC"))?
            .and_utc()
            .timestamp_micros()
    } else {
        parse_timestamp(ts)?
    };
    local
        .checked_sub(sign * secs * 1_000_000)
        .ok_or_else(|| ValueError(format!("{s:?} is out of range")))
}

fn parse_bytea(s: &str) -> VResult<Vec<u8>> {
    let hex = s
        .strip_prefix("\\x")
        .ok_or_else(|| ValueError("bytea is not in hex format (set bytea_output = hex)".into()))?;
    if hex.len() % 2 != 0 {
        return Err(ValueError("odd-length hex bytea".into()));
    }
    fn nibble(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    // Bytes, not chars: text that is not ASCII is an error, never a slice
    // through a UTF-8 sequence.
    hex.as_bytes()
        .chunks(2)
        .map(|pair| match (nibble(pair[0]), nibble(pair[1])) {
            (Some(h), Some(l)) => Ok(h << 4 | l),
            _ => Err(ValueError("bad hex in bytea".into())),
        })
        .collect()
}

/// Split a one-dimensional Postgres array literal into elements (None = NULL).
pub fn parse_array(s: &str) -> VResult<Vec<Option<String>>> {
    let s = s.trim();
    // Optional dimension decoration: "[0:2]={...}"
    let s = match s.find("={") {
        Some(p) if s.starts_with('[') => &s[p + 1..],
        _ => s,
    };
    let inner = s
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or_else(|| ValueError(format!("{s:?} is not an array literal")))?;
    let mut out = Vec::new();
    if inner.is_empty() {
        return Ok(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        match chars.peek() {
            Some('{') => {
                return Err(ValueError(
                    "multi-dimensional arrays are not supported in bronze list columns".into(),
                ));
            }
            Some('"') => {
                chars.next();
                let mut v = String::new();
                loop {
                    match chars.next() {
                        Some('\\') => {
                            if let Some(c) = chars.next() {
                                v.push(c);
                            }
                        }
                        Some('"') => break,
                        Some(c) => v.push(c),
                        None => return Err(ValueError("unterminated quoted array element".into())),
                    }
                }
                out.push(Some(v));
            }
            _ => {
                let mut v = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    v.push(c);
                    chars.next();
                }
                let v = v.trim().to_string();
                out.push(if v.eq_ignore_ascii_case("NULL") {
                    None
                } else {
                    Some(v)
                });
            }
        }
        match chars.next() {
            Some(',') => continue,
            None => break,
            Some(c) => return Err(ValueError(format!("unexpected {c:?} in array literal"))),
        }
    }
    Ok(out)
}

/// An Arrow builder for one bronze column.
pub enum ColumnBuilder {
    Bool(BooleanBuilder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder, u8, i8),
    Text(StringBuilder),
    Binary(BinaryBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    TimestampTz(TimestampMicrosecondBuilder),
    List(ListBuilder<Box<dyn ArrayBuilder>>, Box<Kind>),
}

fn dyn_builder(kind: &Kind) -> Box<dyn ArrayBuilder> {
    match kind {
        Kind::Bool => Box::new(BooleanBuilder::new()),
        Kind::Int16 => Box::new(Int16Builder::new()),
        Kind::Int32 => Box::new(Int32Builder::new()),
        Kind::Int64 => Box::new(Int64Builder::new()),
        Kind::Float32 => Box::new(Float32Builder::new()),
        Kind::Float64 => Box::new(Float64Builder::new()),
        Kind::Decimal { precision, scale } => Box::new(
            Decimal128Builder::new()
                .with_precision_and_scale(*precision, *scale)
                .expect("valid decimal"),
        ),
        Kind::Text => Box::new(StringBuilder::new()),
        Kind::Binary => Box::new(BinaryBuilder::new()),
        Kind::Date => Box::new(Date32Builder::new()),
        Kind::Timestamp => Box::new(TimestampMicrosecondBuilder::new()),
        Kind::TimestampTz => Box::new(TimestampMicrosecondBuilder::new().with_timezone("UTC")),
        // Nested lists are not produced by map_type.
        Kind::List(_) => Box::new(StringBuilder::new()),
    }
}

fn append_elem(b: &mut Box<dyn ArrayBuilder>, kind: &Kind, v: Option<&str>) -> VResult<()> {
    macro_rules! typed {
        ($t:ty) => {
            b.as_any_mut()
                .downcast_mut::<$t>()
                .ok_or_else(|| ValueError("internal: list builder type".into()))?
        };
    }
    match kind {
        Kind::Bool => typed!(BooleanBuilder).append_option(v.map(|s| s == "t" || s == "true")),
        Kind::Int16 => typed!(Int16Builder).append_option(v.map(parse_num).transpose()?),
        Kind::Int32 => typed!(Int32Builder).append_option(v.map(parse_num).transpose()?),
        Kind::Int64 => typed!(Int64Builder).append_option(v.map(parse_num).transpose()?),
        Kind::Float32 => typed!(Float32Builder).append_option(v.map(parse_float).transpose()?),
        Kind::Float64 => typed!(Float64Builder).append_option(v.map(parse_float).transpose()?),
        Kind::Decimal { precision, scale } => typed!(Decimal128Builder).append_option(
            v.map(|s| parse_decimal(s, *precision, *scale))
                .transpose()?,
        ),
        Kind::Text | Kind::List(_) => typed!(StringBuilder).append_option(v),
        Kind::Binary => typed!(BinaryBuilder).append_option(v.map(parse_bytea).transpose()?),
        Kind::Date => typed!(Date32Builder).append_option(v.map(parse_date).transpose()?),
        Kind::Timestamp => {
            typed!(TimestampMicrosecondBuilder).append_option(v.map(parse_timestamp).transpose()?)
        }
        Kind::TimestampTz => {
            typed!(TimestampMicrosecondBuilder).append_option(v.map(parse_timestamptz).transpose()?)
        }
    }
    Ok(())
}

fn parse_num<T: std::str::FromStr>(s: &str) -> VResult<T> {
    s.parse()
        .map_err(|_| ValueError(format!("{s:?} is not an integer in range")))
}

fn parse_float<T: std::str::FromStr>(s: &str) -> VResult<T> {
    s.parse()
        .map_err(|_| ValueError(format!("{s:?} is not a float")))
}

impl ColumnBuilder {
    pub fn new(kind: &Kind) -> Self {
        match kind {
            Kind::Bool => ColumnBuilder::Bool(BooleanBuilder::new()),
            Kind::Int16 => ColumnBuilder::Int16(Int16Builder::new()),
            Kind::Int32 => ColumnBuilder::Int32(Int32Builder::new()),
            Kind::Int64 => ColumnBuilder::Int64(Int64Builder::new()),
            Kind::Float32 => ColumnBuilder::Float32(Float32Builder::new()),
            Kind::Float64 => ColumnBuilder::Float64(Float64Builder::new()),
            Kind::Decimal { precision, scale } => ColumnBuilder::Decimal(
                Decimal128Builder::new()
                    .with_precision_and_scale(*precision, *scale)
                    .expect("valid decimal"),
                *precision,
                *scale,
            ),
            Kind::Text => ColumnBuilder::Text(StringBuilder::new()),
            Kind::Binary => ColumnBuilder::Binary(BinaryBuilder::new()),
            Kind::Date => ColumnBuilder::Date(Date32Builder::new()),
            Kind::Timestamp => ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::new()),
            Kind::TimestampTz => {
                ColumnBuilder::TimestampTz(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
            }
            Kind::List(inner) => ColumnBuilder::List(
                ListBuilder::new(dyn_builder(inner)).with_field(Arc::new(Field::new(
                    "element",
                    inner.arrow_type(),
                    true,
                ))),
                inner.clone(),
            ),
        }
    }

    /// Append NULL.
    pub fn append_null(&mut self) {
        match self {
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::Int16(b) => b.append_null(),
            ColumnBuilder::Int32(b) => b.append_null(),
            ColumnBuilder::Int64(b) => b.append_null(),
            ColumnBuilder::Float32(b) => b.append_null(),
            ColumnBuilder::Float64(b) => b.append_null(),
            ColumnBuilder::Decimal(b, ..) => b.append_null(),
            ColumnBuilder::Text(b) => b.append_null(),
            ColumnBuilder::Binary(b) => b.append_null(),
            ColumnBuilder::Date(b) => b.append_null(),
            ColumnBuilder::Timestamp(b) | ColumnBuilder::TimestampTz(b) => b.append_null(),
            ColumnBuilder::List(b, _) => b.append_null(),
        }
    }

    /// Append a value given in Postgres text format. On error nothing is appended.
    pub fn append_text(&mut self, raw: &[u8]) -> VResult<()> {
        let s = utf8(raw)?;
        match self {
            ColumnBuilder::Bool(b) => match s {
                "t" | "true" => b.append_value(true),
                "f" | "false" => b.append_value(false),
                _ => return Err(ValueError(format!("{s:?} is not a boolean"))),
            },
            ColumnBuilder::Int16(b) => b.append_value(parse_num(s)?),
            ColumnBuilder::Int32(b) => b.append_value(parse_num(s)?),
            ColumnBuilder::Int64(b) => b.append_value(parse_num(s)?),
            ColumnBuilder::Float32(b) => b.append_value(parse_float(s)?),
            ColumnBuilder::Float64(b) => b.append_value(parse_float(s)?),
            ColumnBuilder::Decimal(b, p, sc) => b.append_value(parse_decimal(s, *p, *sc)?),
            ColumnBuilder::Text(b) => b.append_value(s),
            ColumnBuilder::Binary(b) => b.append_value(parse_bytea(s)?),
            ColumnBuilder::Date(b) => b.append_value(parse_date(s)?),
            ColumnBuilder::Timestamp(b) => b.append_value(parse_timestamp(s)?),
            ColumnBuilder::TimestampTz(b) => b.append_value(parse_timestamptz(s)?),
            ColumnBuilder::List(b, inner) => {
                let elems = parse_array(s)?;
                // Validate every element first so a failure appends nothing.
                let mut probe = dyn_builder(inner);
                for e in &elems {
                    append_elem(&mut probe, inner, e.as_deref())?;
                }
                for e in &elems {
                    append_elem(b.values(), inner, e.as_deref())?;
                }
                b.append(true);
            }
        }
        Ok(())
    }

    pub fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            ColumnBuilder::Int16(b) => Arc::new(b.finish()),
            ColumnBuilder::Int32(b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(b) => Arc::new(b.finish()),
            ColumnBuilder::Float32(b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(b) => Arc::new(b.finish()),
            ColumnBuilder::Decimal(b, ..) => Arc::new(b.finish()),
            ColumnBuilder::Text(b) => Arc::new(b.finish()),
            ColumnBuilder::Binary(b) => Arc::new(b.finish()),
            ColumnBuilder::Date(b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(b) | ColumnBuilder::TimestampTz(b) => Arc::new(b.finish()),
            ColumnBuilder::List(b, _) => Arc::new(b.finish()),
        }
    }
}

/// Build an [`Error::Value`] for a column.
pub fn value_error(table: &str, column: &str, kind: &Kind, raw: &[u8], e: ValueError) -> Error {
    let mut value = String::from_utf8_lossy(raw).into_owned();
    if value.len() > 200 {
        let mut cut = 200;
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        value.truncate(cut);
        value.push('…');
    }
    Error::Value {
        table: table.to_string(),
        column: column.to_string(),
        value,
        arrow_type: kind.arrow_type().to_string(),
        reason: e.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Decimal128Type, Int32Type};

    #[test]
    fn numeric_typmod() {
        // numeric(12,2): typmod = (12 << 16 | 2) + 4
        let m = map_type(1700, (12 << 16 | 2) + 4, 18);
        assert_eq!(
            m.kind,
            Kind::Decimal {
                precision: 12,
                scale: 2
            }
        );
        assert_eq!(
            map_type(1700, -1, 18).kind,
            Kind::Decimal {
                precision: 38,
                scale: 18
            }
        );
        assert_eq!(map_type(1700, (50 << 16 | 2) + 4, 18).kind, Kind::Text);
        assert!(map_type(99999, -1, 18).unknown_type);
        assert_eq!(
            map_type(1007, -1, 18).kind,
            Kind::List(Box::new(Kind::Int32))
        );
    }

    #[test]
    fn decimals_never_round() {
        assert_eq!(
            parse_decimal("123.45", 38, 18).unwrap(),
            123_450_000_000_000_000_000
        );
        assert_eq!(parse_decimal("-0.5", 10, 2).unwrap(), -50);
        assert_eq!(parse_decimal("7", 10, 2).unwrap(), 700);
        assert_eq!(
            parse_decimal("1.2300", 10, 2).unwrap(),
            123,
            "trailing zeros are lossless"
        );
        assert!(parse_decimal("1.234", 10, 2).is_err(), "would round");
        assert!(
            parse_decimal("123456789", 10, 2).is_err(),
            "too many digits"
        );
        assert!(parse_decimal("NaN", 38, 18).is_err());
        assert!(parse_decimal("abc", 38, 18).is_err());
    }

    #[test]
    fn plain_decimals_parse_as_the_general_path_does() {
        // Every shape of up to 40 characters built from these pieces, at
        // several precisions and scales: the one-pass path either agrees
        // with the general one or leaves the text to it.
        let pieces = [
            "",
            "-",
            "+",
            "0",
            "00",
            "7",
            "12345678901234567",
            "999999999999999999",
            ".",
            "5",
            "50",
            "000",
            "1",
            "x",
            " ",
        ];
        let mut fast = 0;
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    for d in ["", "0", "9", ".", "00000000000000000001"] {
                        let text = format!("{a}{b}{c}{d}");
                        for (p, sc) in [(38, 24), (38, 18), (12, 2), (10, 0), (38, 0), (5, 3)] {
                            let general = general_decimal(&text, p, sc).ok();
                            match plain_decimal(text.as_bytes(), p, sc) {
                                Some(v) => {
                                    fast += 1;
                                    assert_eq!(Some(v), general, "{text:?} at ({p}, {sc})");
                                }
                                None => assert!(
                                    general.is_none() || text.contains(['+', ' ']),
                                    "{text:?} at ({p}, {sc}) left to the general path: {general:?}"
                                ),
                            }
                        }
                    }
                }
            }
        }
        assert!(fast > 10_000, "the one-pass path took {fast} values");
        assert_eq!(
            parse_decimal("-00012345678901234567.0500", 38, 18).unwrap(),
            -12_345_678_901_234_567_050_000_000_000_000_000i128
        );
    }

    #[test]
    fn dates_and_timestamps() {
        assert_eq!(parse_date("1970-01-02").unwrap(), 1);
        assert!(parse_date("infinity").is_err());
        assert_eq!(parse_timestamp("1970-01-01 00:00:01.5").unwrap(), 1_500_000);
        assert_eq!(parse_timestamptz("1970-01-01 01:00:00+01").unwrap(), 0);
        assert_eq!(
            parse_timestamptz("1970-01-01 00:00:00-02:30").unwrap(),
            9_000_000_000
        );
        assert_eq!(
            parse_timestamptz("2025-06-01 10:00:00.123456+00").unwrap() % 1_000_000,
            123_456
        );
        assert!(parse_date("0001-01-01 BC").unwrap() < parse_date("0001-01-01").unwrap());
    }

    #[test]
    fn fast_paths_agree_with_chrono() {
        for d in [
            "1970-01-01",
            "2000-02-29",
            "1999-12-31",
            "2025-06-15",
            "0001-01-01",
            "9999-12-31",
            "1900-03-01",
        ] {
            let slow = (NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap()
                - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap())
            .num_days();
            assert_eq!(fast_date(d.as_bytes()), Some(slow), "{d}");
        }
        for t in [
            "2025-01-01 08:00:00",
            "2025-01-01 08:00:00.5",
            "1969-12-31 23:59:59.999999",
            "2024-02-29 12:34:56.000123",
        ] {
            let slow = parse_naive_ts(t).unwrap().and_utc().timestamp_micros();
            assert_eq!(fast_timestamp(t.as_bytes()), Some(slow), "{t}");
        }
        assert_eq!(
            fast_date(b"2023-02-29"),
            None,
            "not a date: falls back, which errors"
        );
        assert!(parse_date("2023-02-29").is_err());
        assert_eq!(fast_timestamp(b"2025-01-01 08:00:00.1234567"), None);
    }

    #[test]
    fn arrays() {
        assert_eq!(
            parse_array(r#"{1,NULL,"a,b","q\"x"}"#).unwrap(),
            vec![
                Some("1".into()),
                None,
                Some("a,b".into()),
                Some("q\"x".into())
            ]
        );
        assert_eq!(parse_array("{}").unwrap(), Vec::<Option<String>>::new());
        assert!(parse_array("{{1,2},{3,4}}").is_err());
        let mut b = ColumnBuilder::new(&Kind::List(Box::new(Kind::Int32)));
        b.append_text(b"{1,2,NULL}").unwrap();
        assert!(b.append_text(b"{1,x}").is_err());
        b.append_null();
        let a = b.finish();
        let l = a.as_list::<i32>();
        assert_eq!(l.len(), 2);
        assert_eq!(l.value(0).as_primitive::<Int32Type>().len(), 3);
        assert!(l.is_null(1));
    }

    #[test]
    fn builder_roundtrip() {
        let mut b = ColumnBuilder::new(&Kind::Decimal {
            precision: 38,
            scale: 18,
        });
        b.append_text(b"10.25").unwrap();
        assert!(b.append_text(b"0.1234567890123456789").is_err());
        let a = b.finish();
        assert_eq!(a.len(), 1, "a failed value appends nothing");
        assert_eq!(
            a.as_primitive::<Decimal128Type>().value(0),
            10_250_000_000_000_000_000
        );
        let mut bb = ColumnBuilder::new(&Kind::Binary);
        bb.append_text(b"\\xdeadbeef").unwrap();
        assert_eq!(
            bb.finish().as_binary::<i32>().value(0),
            &[0xde, 0xad, 0xbe, 0xef]
        );
    }

    #[test]
    fn bad_input_is_an_error_never_a_panic() {
        // Non-ASCII where hex digits belong: two bytes of 'é' at an odd offset.
        assert!(parse_bytea("\\xaéb").is_err());
        assert!(parse_bytea("\\xéa").is_err());
        assert!(parse_bytea("\\xzz").is_err());
        assert_eq!(parse_bytea("\\xDEad").unwrap(), vec![0xde, 0xad]);
        // Offsets Postgres never prints, and ones that would overflow.
        assert!(parse_timestamptz("2025-01-01 00:00:00+99999999999999999").is_err());
        assert!(parse_timestamptz("2025-01-01 00:00:00+16").is_err());
        assert!(parse_timestamptz("2025-01-01 00:00:00+05:99").is_err());
        assert_eq!(
            parse_timestamptz("1970-01-01 00:00:00+15:59:59").unwrap(),
            -(15 * 3600 + 59 * 60 + 59) * 1_000_000
        );
        // A stored decimal Arrow cannot build is not a kind.
        assert!(Kind::from_arrow(&DataType::Decimal128(5, 7)).is_none());
        assert!(Kind::from_arrow(&DataType::Decimal128(0, 0)).is_none());
        assert!(Kind::from_arrow(&DataType::Decimal128(39, 2)).is_none());
        assert!(Kind::from_arrow(&DataType::Decimal128(10, -1)).is_none());
        assert!(Kind::from_arrow(&DataType::Decimal128(38, 24)).is_some());
    }
}
