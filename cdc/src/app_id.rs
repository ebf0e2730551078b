//! Every Delta application-transaction id medallion records, in one place.
//!
//! A Delta `txn` action keeps one version per application id, committed
//! atomically with the data; after any crash these versions say what each
//! table reflects. The ids are part of the lake's format: a lake written by
//! an earlier release is read with the same ids, so their text never changes.
//!
//! Ids are built here and never parsed back: every reader knows the table
//! and name whose version it wants and builds that id. The text is not a
//! format to parse: a source table's schema and name are quoted Postgres
//! identifiers and may hold `:` and `.` themselves (a table named
//! `t:snapshot` would read as another table's snapshot id).
//!
//! | id | table | its version |
//! |---|---|---|
//! | `medallion:<slot>:<schema.table>` | bronze | the stream position committed: the commit LSN of the last source transaction in the table; every one up to it is in the table |
//! | `medallion:<slot>:<schema.table>:snapshot` | bronze | the LSN of the current generation's copy |
//! | `medallion:<slot>:<schema.table>:resync` | bronze | the resync request served (epoch µs) |
//! | `medallion:silver:<name>` | silver | every source transaction with commit LSN below it applied |
//! | `medallion:silver:<name>:generation` | silver | the bronze generation (copy LSN) it is built from |
//! | `medallion:silver:<name>:definition` | silver | the fingerprint of the definition it is built with |
//! | `medallion:gold:<name>` | gold | the watermark it was computed at |
//! | `medallion:gold:<name>:query` | gold | the fingerprint of the query and keys |
//! | `medallion:gold:<name>:input:<layer.name>` | gold | the Delta version of that input it read |
//! | `medallion:gold:<name>:refreshed_at` | gold | when it was computed (epoch ms) |
//! | `medallion:quarantine:<name>:<rule>` | quarantine | the end of the last slice whose dropped rows were appended |

use std::fmt;

use crate::bronze::TableId;

/// One application id of a Delta `txn` action (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppId<'a> {
    Stream { slot: &'a str, table: &'a TableId },
    Snapshot { slot: &'a str, table: &'a TableId },
    Resync { slot: &'a str, table: &'a TableId },
    Silver(&'a str),
    SilverGeneration(&'a str),
    SilverDefinition(&'a str),
    Gold(&'a str),
    GoldQuery(&'a str),
    GoldInput { model: &'a str, input: &'a str },
    GoldRefreshedAt(&'a str),
    Quarantine { table: &'a str, rule: &'a str },
}

impl fmt::Display for AppId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppId::Stream { slot, table } => write!(f, "medallion:{slot}:{table}"),
            AppId::Snapshot { slot, table } => write!(f, "medallion:{slot}:{table}:snapshot"),
            AppId::Resync { slot, table } => write!(f, "medallion:{slot}:{table}:resync"),
            AppId::Silver(name) => write!(f, "medallion:silver:{name}"),
            AppId::SilverGeneration(name) => write!(f, "medallion:silver:{name}:generation"),
            AppId::SilverDefinition(name) => write!(f, "medallion:silver:{name}:definition"),
            AppId::Gold(name) => write!(f, "medallion:gold:{name}"),
            AppId::GoldQuery(name) => write!(f, "medallion:gold:{name}:query"),
            AppId::GoldInput { model, input } => {
                write!(f, "medallion:gold:{model}:input:{input}")
            }
            AppId::GoldRefreshedAt(name) => write!(f, "medallion:gold:{name}:refreshed_at"),
            AppId::Quarantine { table, rule } => write!(f, "medallion:quarantine:{table}:{rule}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ids are the lake's format: these are the texts earlier releases
    /// wrote, and must stay so.
    #[test]
    fn ids_keep_the_text_existing_lakes_hold() {
        let t = TableId {
            schema: "public".into(),
            table: "account_move".into(),
        };
        let slot = "medallion";
        for (id, text) in [
            (
                AppId::Stream { slot, table: &t },
                "medallion:medallion:public.account_move",
            ),
            (
                AppId::Snapshot { slot, table: &t },
                "medallion:medallion:public.account_move:snapshot",
            ),
            (
                AppId::Resync { slot, table: &t },
                "medallion:medallion:public.account_move:resync",
            ),
            (AppId::Silver("am"), "medallion:silver:am"),
            (
                AppId::SilverGeneration("am"),
                "medallion:silver:am:generation",
            ),
            (
                AppId::SilverDefinition("am"),
                "medallion:silver:am:definition",
            ),
            (AppId::Gold("gl"), "medallion:gold:gl"),
            (AppId::GoldQuery("gl"), "medallion:gold:gl:query"),
            (
                AppId::GoldInput {
                    model: "gl",
                    input: "silver.am",
                },
                "medallion:gold:gl:input:silver.am",
            ),
            (
                AppId::GoldRefreshedAt("gl"),
                "medallion:gold:gl:refreshed_at",
            ),
            (
                AppId::Quarantine {
                    table: "am",
                    rule: "positive",
                },
                "medallion:quarantine:am:positive",
            ),
        ] {
            assert_eq!(id.to_string(), text);
        }
    }
}
