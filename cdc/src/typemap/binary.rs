//! Values in Postgres' binary format, as `COPY … (FORMAT binary)` sends them.
//!
//! The initial copy reads a table in binary when every copied column is of
//! a type listed here and bronze stores it as that type's usual [`Kind`];
//! otherwise it reads the table as text. A value read either way becomes
//! the same bronze value: a value the text path refuses (an infinite date, a
//! numeric that does not fit its decimal) is refused here too, with the text
//! path's reason and the value as Postgres prints it.

use super::{
    ColumnBuilder, Kind, POW10, VResult, ValueError, oid, parse_date, parse_decimal,
    parse_timestamp, utf8,
};

/// How one column's values are sent in binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Bool,
    Int2,
    Int4,
    Int8,
    /// `oid`: an unsigned 32-bit integer, stored as a 64-bit one.
    Oid,
    Float4,
    Float8,
    /// `numeric` stored as a decimal of this precision and scale.
    Numeric {
        precision: u8,
        scale: i8,
    },
    /// Types whose binary form is their text: `text`, `varchar`, `bpchar`
    /// (padded, as printed), `name`, `json`.
    Text,
    /// `jsonb`: a version byte (1), then the text.
    Jsonb,
    /// `uuid`: 16 bytes, stored as its text.
    Uuid,
    Bytea,
    /// Days since 2000-01-01.
    Date,
    /// Microseconds since 2000-01-01 00:00 (UTC for `timestamptz`).
    Timestamp,
}

/// Days from 1970-01-01 to 2000-01-01, Postgres' epoch.
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

impl Wire {
    /// The binary form of a column of type `type_oid` stored as `kind`;
    /// None when the copy must read it as text.
    pub fn of(type_oid: u32, kind: &Kind) -> Option<Wire> {
        Some(match (type_oid, kind) {
            (oid::BOOL, Kind::Bool) => Wire::Bool,
            (oid::INT2, Kind::Int16) => Wire::Int2,
            (oid::INT4, Kind::Int32) => Wire::Int4,
            (oid::INT8, Kind::Int64) => Wire::Int8,
            (oid::OID, Kind::Int64) => Wire::Oid,
            (oid::FLOAT4, Kind::Float32) => Wire::Float4,
            (oid::FLOAT8, Kind::Float64) => Wire::Float8,
            (oid::NUMERIC, Kind::Decimal { precision, scale }) => Wire::Numeric {
                precision: *precision,
                scale: *scale,
            },
            (oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::JSON, Kind::Text) => {
                Wire::Text
            }
            (oid::JSONB, Kind::Text) => Wire::Jsonb,
            (oid::UUID, Kind::Text) => Wire::Uuid,
            (oid::BYTEA, Kind::Binary) => Wire::Bytea,
            (oid::DATE, Kind::Date) => Wire::Date,
            (oid::TIMESTAMP, Kind::Timestamp) | (oid::TIMESTAMPTZ, Kind::TimestampTz) => {
                Wire::Timestamp
            }
            _ => return None,
        })
    }

    /// The value as Postgres prints it, for an error message (binary values
    /// that are not text are shown as the text path would have seen them).
    pub fn render(self, raw: &[u8]) -> String {
        match self {
            Wire::Numeric { .. } => numeric_text(raw).unwrap_or_else(|| hex(raw)),
            Wire::Date => match be::<4>(raw).map(i32::from_be_bytes) {
                Some(i32::MAX) => "infinity".into(),
                Some(i32::MIN) => "-infinity".into(),
                Some(d) => format!("day {d} after 2000-01-01"),
                None => hex(raw),
            },
            Wire::Timestamp => match be::<8>(raw).map(i64::from_be_bytes) {
                Some(i64::MAX) => "infinity".into(),
                Some(i64::MIN) => "-infinity".into(),
                Some(us) => format!("{us} µs after 2000-01-01"),
                None => hex(raw),
            },
            Wire::Text | Wire::Jsonb => String::from_utf8_lossy(raw).into_owned(),
            _ => hex(raw),
        }
    }
}

/// The text path's reason for refusing a value it is known to refuse.
fn refused<T>(text_path: VResult<T>) -> ValueError {
    match text_path {
        Err(e) => e,
        Ok(_) => ValueError("an infinite value has no Delta representation".into()),
    }
}

fn hex(raw: &[u8]) -> String {
    let mut s = String::with_capacity(2 + raw.len() * 2);
    s.push_str("\\x");
    for b in raw {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn be<const N: usize>(raw: &[u8]) -> Option<[u8; N]> {
    raw.try_into().ok()
}

fn sized<const N: usize>(raw: &[u8], what: &str) -> VResult<[u8; N]> {
    be::<N>(raw).ok_or_else(|| {
        ValueError(format!(
            "a binary {what} of {} bytes (expected {N})",
            raw.len()
        ))
    })
}

/// A binary `numeric`'s header and base-10000 digits.
struct Numeric<'a> {
    weight: i32,
    sign: u16,
    dscale: u16,
    digits: &'a [u8],
}

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

impl<'a> Numeric<'a> {
    fn read(raw: &'a [u8]) -> Option<Numeric<'a>> {
        let head = raw.get(..8)?;
        let ndigits = u16::from_be_bytes([head[0], head[1]]) as usize;
        let digits = &raw[8..];
        (digits.len() == ndigits * 2).then(|| Numeric {
            weight: i16::from_be_bytes([head[2], head[3]]) as i32,
            sign: u16::from_be_bytes([head[4], head[5]]),
            dscale: u16::from_be_bytes([head[6], head[7]]),
            digits,
        })
    }

    fn digit(&self, i: usize) -> u16 {
        self.digits
            .get(2 * i..2 * i + 2)
            .map_or(0, |d| u16::from_be_bytes([d[0], d[1]]))
    }

    fn ndigits(&self) -> usize {
        self.digits.len() / 2
    }
}

/// A binary `numeric` printed as `numeric_out` prints it.
fn numeric_text(raw: &[u8]) -> Option<String> {
    let n = Numeric::read(raw)?;
    match n.sign {
        NUMERIC_NAN => return Some("NaN".into()),
        NUMERIC_PINF => return Some("Infinity".into()),
        NUMERIC_NINF => return Some("-Infinity".into()),
        NUMERIC_POS | NUMERIC_NEG => {}
        _ => return None,
    }
    let mut s = String::new();
    if n.sign == NUMERIC_NEG {
        s.push('-');
    }
    if n.weight < 0 {
        s.push('0');
    } else {
        for i in 0..=n.weight as usize {
            let d = n.digit(i);
            if i == 0 {
                s.push_str(&d.to_string());
            } else {
                s.push_str(&format!("{d:04}"));
            }
        }
    }
    if n.dscale > 0 {
        s.push('.');
        let mut frac = String::new();
        let mut i = n.weight + 1;
        while frac.len() < n.dscale as usize {
            let d = if i < 0 { 0 } else { n.digit(i as usize) };
            frac.push_str(&format!("{d:04}"));
            i += 1;
        }
        frac.truncate(n.dscale as usize);
        s.push_str(&frac);
    }
    Some(s)
}

/// A binary `numeric` as a decimal of `precision` and `scale` when it fits
/// exactly; None for anything else (the text path then decides, with its
/// reason).
fn numeric_scaled(raw: &[u8], precision: u8, scale: i8) -> Option<i128> {
    let n = Numeric::read(raw)?;
    let neg = match n.sign {
        NUMERIC_POS => false,
        NUMERIC_NEG => true,
        _ => return None,
    };
    let scale = scale.max(0) as i32;
    let mut v: i128 = 0;
    for i in 0..n.ndigits() {
        let d = n.digit(i);
        if d > 9999 {
            return None;
        }
        // The power of ten of this group's units, in units of the scale.
        let exp = 4 * (n.weight - i as i32) + scale;
        let add = if exp >= 0 {
            if d == 0 {
                continue;
            }
            (d as i128).checked_mul(*POW10.get(exp as usize)?)?
        } else {
            let cut = *POW10.get((-exp).min(4) as usize)? as u16;
            if d % cut != 0 {
                return None;
            }
            (d / cut) as i128
        };
        v = v.checked_add(add)?;
    }
    if v >= *POW10.get(precision as usize)? {
        return None;
    }
    Some(if neg { -v } else { v })
}

impl ColumnBuilder {
    /// Append a value sent in binary as `wire`. On error nothing is
    /// appended.
    pub fn append_wire(&mut self, wire: Wire, raw: &[u8]) -> VResult<()> {
        match (self, wire) {
            (ColumnBuilder::Bool(b), Wire::Bool) => match raw {
                [0] => b.append_value(false),
                [1] => b.append_value(true),
                _ => return Err(ValueError(format!("{} is not a binary boolean", hex(raw)))),
            },
            (ColumnBuilder::Int16(b), Wire::Int2) => {
                b.append_value(i16::from_be_bytes(sized(raw, "int2")?))
            }
            (ColumnBuilder::Int32(b), Wire::Int4) => {
                b.append_value(i32::from_be_bytes(sized(raw, "int4")?))
            }
            (ColumnBuilder::Int64(b), Wire::Int8) => {
                b.append_value(i64::from_be_bytes(sized(raw, "int8")?))
            }
            (ColumnBuilder::Int64(b), Wire::Oid) => {
                b.append_value(u32::from_be_bytes(sized(raw, "oid")?) as i64)
            }
            (ColumnBuilder::Float32(b), Wire::Float4) => {
                b.append_value(f32::from_be_bytes(sized(raw, "float4")?))
            }
            (ColumnBuilder::Float64(b), Wire::Float8) => {
                b.append_value(f64::from_be_bytes(sized(raw, "float8")?))
            }
            (ColumnBuilder::Decimal(b, ..), Wire::Numeric { precision, scale }) => {
                let v = match numeric_scaled(raw, precision, scale) {
                    Some(v) => v,
                    None => {
                        let text = numeric_text(raw).ok_or_else(|| {
                            ValueError(format!("{} is not a binary numeric", hex(raw)))
                        })?;
                        parse_decimal(&text, precision, scale)?
                    }
                };
                b.append_value(v)
            }
            (ColumnBuilder::Text(b), Wire::Text) => b.append_value(utf8(raw)?),
            (ColumnBuilder::Text(b), Wire::Jsonb) => match raw.split_first() {
                Some((1, text)) => b.append_value(utf8(text)?),
                _ => return Err(ValueError("not a version 1 binary jsonb".into())),
            },
            (ColumnBuilder::Text(b), Wire::Uuid) => {
                let u: [u8; 16] = sized(raw, "uuid")?;
                let mut text = [0u8; 36];
                let mut at = 0;
                for (i, byte) in u.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        text[at] = b'-';
                        at += 1;
                    }
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    text[at] = HEX[(byte >> 4) as usize];
                    text[at + 1] = HEX[(byte & 15) as usize];
                    at += 2;
                }
                b.append_value(utf8(&text)?)
            }
            (ColumnBuilder::Binary(b), Wire::Bytea) => b.append_value(raw),
            (ColumnBuilder::Date(b), Wire::Date) => match i32::from_be_bytes(sized(raw, "date")?) {
                d @ (i32::MAX | i32::MIN) => {
                    return Err(refused(parse_date(&Wire::Date.render(&d.to_be_bytes()))));
                }
                d => b.append_value(d.checked_add(PG_EPOCH_DAYS).ok_or_else(|| {
                    ValueError(format!("day {d} after 2000-01-01 is out of range"))
                })?),
            },
            (ColumnBuilder::Timestamp(b) | ColumnBuilder::TimestampTz(b), Wire::Timestamp) => {
                match i64::from_be_bytes(sized(raw, "timestamp")?) {
                    us @ (i64::MAX | i64::MIN) => {
                        return Err(refused(parse_timestamp(
                            &Wire::Timestamp.render(&us.to_be_bytes()),
                        )));
                    }
                    us => b.append_value(us.checked_add(PG_EPOCH_US).ok_or_else(|| {
                        ValueError(format!("{us} µs after 2000-01-01 is out of range"))
                    })?),
                }
            }
            (_, wire) => {
                return Err(ValueError(format!(
                    "a binary {wire:?} value for a column of another type"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{Date32Type, Decimal128Type, TimestampMicrosecondType};

    /// `numeric_send`'s bytes for base-10000 `digits` at `weight`.
    fn numeric(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(digits.len() as u16).to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics_print_and_scale_as_the_text_path_reads_them() {
        let cases: &[(Vec<u8>, &str)] = &[
            (numeric(0, NUMERIC_POS, 0, &[]), "0"),
            (numeric(0, NUMERIC_POS, 2, &[]), "0.00"),
            (numeric(1, NUMERIC_POS, 2, &[12, 3456, 7800]), "123456.78"),
            (numeric(0, NUMERIC_NEG, 4, &[5, 1]), "-5.0001"),
            (numeric(-1, NUMERIC_POS, 6, &[12, 3400]), "0.001234"),
            (numeric(-2, NUMERIC_POS, 8, &[12]), "0.00000012"),
            (numeric(2, NUMERIC_POS, 0, &[1]), "100000000"),
            (numeric(0, NUMERIC_POS, 3, &[7, 1230]), "7.123"),
            (
                numeric(
                    4,
                    NUMERIC_POS,
                    10,
                    &[1234, 5678, 9012, 3456, 7890, 123, 4567, 8900],
                ),
                "12345678901234567890.0123456789",
            ),
            (numeric(0, NUMERIC_NAN, 0, &[]), "NaN"),
            (numeric(0, NUMERIC_PINF, 0, &[]), "Infinity"),
            (numeric(0, NUMERIC_NINF, 0, &[]), "-Infinity"),
        ];
        let mut scaled = 0;
        for (raw, text) in cases {
            assert_eq!(numeric_text(raw).as_deref(), Some(*text));
            for (p, s) in [
                (38, 18),
                (38, 24),
                (12, 2),
                (10, 4),
                (38, 0),
                (20, 10),
                (9, 8),
            ] {
                let via_text = parse_decimal(text, p, s).ok();
                let binary = numeric_scaled(raw, p, s);
                if binary.is_some() {
                    scaled += 1;
                    assert_eq!(binary, via_text, "{text} at ({p}, {s})");
                }
                let mut b = ColumnBuilder::new(&Kind::Decimal {
                    precision: p,
                    scale: s,
                });
                let got = b.append_wire(
                    Wire::Numeric {
                        precision: p,
                        scale: s,
                    },
                    raw,
                );
                assert_eq!(got.is_ok(), via_text.is_some(), "{text} at ({p}, {s})");
                if let Some(v) = via_text {
                    let a = b.finish();
                    assert_eq!(a.as_primitive::<Decimal128Type>().value(0), v);
                }
            }
        }
        assert!(scaled > 30, "the binary path scaled {scaled} values");
    }

    #[test]
    fn dates_timestamps_and_uuids() {
        let mut d = ColumnBuilder::new(&Kind::Date);
        d.append_wire(Wire::Date, &0i32.to_be_bytes()).unwrap();
        d.append_wire(Wire::Date, &(-730_119i32).to_be_bytes())
            .unwrap();
        assert!(d.append_wire(Wire::Date, &i32::MAX.to_be_bytes()).is_err());
        assert!(d.append_wire(Wire::Date, &[0, 0]).is_err());
        let a = d.finish();
        let a = a.as_primitive::<Date32Type>();
        assert_eq!(a.len(), 2, "a refused value appends nothing");
        assert_eq!(a.value(0), parse_date("2000-01-01").unwrap());
        assert_eq!(a.value(1), parse_date("0001-01-01").unwrap());

        let mut t = ColumnBuilder::new(&Kind::TimestampTz);
        t.append_wire(Wire::Timestamp, &1_500_000i64.to_be_bytes())
            .unwrap();
        assert!(
            t.append_wire(Wire::Timestamp, &i64::MIN.to_be_bytes())
                .is_err()
        );
        let a = t.finish();
        assert_eq!(
            a.as_primitive::<TimestampMicrosecondType>().value(0),
            super::super::parse_timestamptz("2000-01-01 00:00:01.5+00").unwrap()
        );

        let mut u = ColumnBuilder::new(&Kind::Text);
        let raw: Vec<u8> = (0..16u8).map(|i| i * 17).collect();
        u.append_wire(Wire::Uuid, &raw).unwrap();
        u.append_wire(Wire::Jsonb, b"\x01{\"a\": 1}").unwrap();
        assert!(u.append_wire(Wire::Jsonb, b"\x02{}").is_err());
        let a = u.finish();
        assert_eq!(
            a.as_string::<i32>().value(0),
            "00112233-4455-6677-8899-aabbccddeeff"
        );
        assert_eq!(a.as_string::<i32>().value(1), "{\"a\": 1}");
        assert_eq!(Wire::Date.render(&i32::MAX.to_be_bytes()), "infinity");
        assert_eq!(
            Wire::Numeric {
                precision: 12,
                scale: 2
            }
            .render(&numeric(0, NUMERIC_NEG, 1, &[3, 5000])),
            "-3.5"
        );
    }

    #[test]
    fn only_a_types_usual_kind_is_read_in_binary() {
        assert_eq!(Wire::of(oid::INT4, &Kind::Int32), Some(Wire::Int4));
        assert_eq!(Wire::of(oid::INT4, &Kind::Int64), None);
        assert_eq!(Wire::of(oid::NUMERIC, &Kind::Text), None, "numeric(60, 10)");
        assert_eq!(Wire::of(oid::INTERVAL, &Kind::Text), None);
        assert_eq!(
            Wire::of(oid::CHAR, &Kind::Text),
            None,
            "\"char\" prints octal"
        );
        assert_eq!(
            Wire::of(1007, &Kind::List(Box::new(Kind::Int32))),
            None,
            "arrays are read as text"
        );
    }
}
