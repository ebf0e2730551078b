//! A position in Postgres's write-ahead log (a log sequence number).
//!
//! One type for every LSN the sidecar handles, from the slot's
//! `confirmed_flush_lsn` through bronze's `_mdl_lsn` column and the Delta
//! application-transaction versions to `medallion.table_status.last_lsn`:
//!
//! ```text
//!  Postgres pg_lsn ──FromSql/ToSql──▶ Lsn ──lake_value()──▶ Delta (i64: _mdl_lsn, txn version)
//!  pgoutput u64    ──Lsn::new──────▶ Lsn ◀──from_lake()──── Delta
//!                                    Lsn ──Display──────▶ "16/B374D848" (logs, commit info)
//! ```
//!
//! Delta stores 64-bit signed integers, Postgres unsigned ones. A WAL
//! position reaches 2⁶³ only after 8 EiB of WAL, so the lake encoding is
//! exact for every real cluster; [`Lsn::lake_value`] saturates rather than
//! wrap should one ever get there, so the order of versions is kept.

use std::error::Error as StdError;
use std::fmt;
use std::str::FromStr;

use bytes::BytesMut;
use tokio_postgres::types::{FromSql, IsNull, PgLsn, ToSql, Type, to_sql_checked};

/// A log sequence number. Ordered as the WAL is; [`Lsn::ZERO`] is "before
/// everything" (nothing acknowledged, nothing committed).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(u64);

impl Lsn {
    /// Before every WAL position.
    pub const ZERO: Lsn = Lsn(0);

    /// The LSN of a raw 64-bit WAL position (as pgoutput and the
    /// replication protocol carry it).
    pub const fn new(raw: u64) -> Lsn {
        Lsn(raw)
    }

    /// The raw 64-bit WAL position.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The LSN as the lake stores it (bronze `_mdl_lsn`, Delta
    /// application-transaction versions, silver/gold watermarks).
    pub const fn lake_value(self) -> i64 {
        if self.0 > i64::MAX as u64 {
            i64::MAX
        } else {
            self.0 as i64
        }
    }

    /// The LSN a lake value stands for; a negative value (Delta's "no
    /// version") is [`Lsn::ZERO`].
    pub const fn from_lake(value: i64) -> Lsn {
        if value < 0 {
            Lsn::ZERO
        } else {
            Lsn(value as u64)
        }
    }
}

impl fmt::Display for Lsn {
    /// Postgres's text form, `16/B374D848`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

impl FromStr for Lsn {
    type Err = crate::Error;

    /// Postgres's text form (`16/B374D848`); anything else is an error,
    /// never a silent zero.
    fn from_str(s: &str) -> Result<Lsn, crate::Error> {
        let half = |h: &str| {
            let hex = !h.is_empty() && h.len() <= 8 && h.bytes().all(|b| b.is_ascii_hexdigit());
            hex.then(|| u64::from_str_radix(h, 16).ok()).flatten()
        };
        s.split_once('/')
            .and_then(|(hi, lo)| Some(Lsn((half(hi)? << 32) | half(lo)?)))
            .ok_or_else(|| {
                crate::Error::Protocol(format!(
                    "{s:?} is not an LSN (expected the form 16/B374D848)"
                ))
            })
    }
}

impl<'a> FromSql<'a> for Lsn {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Lsn, Box<dyn StdError + Sync + Send>> {
        PgLsn::from_sql(ty, raw).map(|l| Lsn(l.into()))
    }

    fn accepts(ty: &Type) -> bool {
        <PgLsn as FromSql>::accepts(ty)
    }
}

impl ToSql for Lsn {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        PgLsn::from(self.0).to_sql(ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <PgLsn as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_is_postgres_own_both_ways() {
        let lsn = Lsn::new(0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap(), lsn);
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn::ZERO);
        assert_eq!(Lsn::new(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn malformed_text_is_an_error_not_zero() {
        for bad in [
            "",
            "16",
            "16/",
            "/1",
            "x/1",
            "1/2/3",
            "100000000/0",
            "+1/0",
            " 1/0",
        ] {
            let err = bad.parse::<Lsn>().unwrap_err();
            assert!(err.to_string().contains("is not an LSN"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn lake_values_keep_the_order() {
        assert_eq!(Lsn::new(42).lake_value(), 42);
        assert_eq!(Lsn::from_lake(42), Lsn::new(42));
        assert_eq!(Lsn::from_lake(-1), Lsn::ZERO);
        let top = Lsn::new(i64::MAX as u64);
        assert_eq!(top.lake_value(), i64::MAX);
        assert_eq!(Lsn::new(u64::MAX).lake_value(), i64::MAX);
        assert!(Lsn::new(1) < Lsn::new(2) && Lsn::ZERO < Lsn::new(1));
    }
}
