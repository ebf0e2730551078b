//! Publication by difference: a published table whose rows have keys is
//! brought from the Delta version it holds to the current one by deleting
//! the rows that changed or left and copying in the rows that changed or
//! arrived, instead of replacing every row.
//!
//! ```text
//!  published table ── comment: (Delta version N) ──► Delta table @ N   (old)
//!                                                    Delta table @ M   (new)
//!        old FULL JOIN new ON keys, rows not the same ─┬─► gone: old keys  ─► DELETE … USING
//!                                                      └─► new: new rows   ─► COPY
//! ```
//!
//! It is what `REFRESH MATERIALIZED VIEW CONCURRENTLY` does, and it holds
//! only when the published table holds exactly version N's rows. So it is
//! taken only when every one of these holds, and the table is replaced
//! whole otherwise ([`super::publish`]):
//!
//! - the table is ours (checked for both paths), has the same columns, and
//!   its comment names the version it holds of this very Delta table (its
//!   metadata id: a lake rebuilt at the same path counts versions from 0
//!   again);
//! - it has a valid unique index on exactly the keys, so a key is one row
//!   (created when the table is replaced whole);
//! - version N can still be read (vacuum keeps a week of versions by
//!   default);
//! - the table holds as many rows as version N, no key that leaves is
//!   NULL, and every key deleted deletes exactly one row (else someone
//!   wrote into the copy);
//! - the difference is at most a third of the rows (beyond that, replacing
//!   costs less).

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::compute::{filter_record_batch, is_not_null};
use deltalake::DeltaTable;
use futures::StreamExt;

use crate::error::{Error, Result};
use crate::lake::{self, ident};

/// The share of the rows beyond which a difference is not worth it.
const MOST_CHANGED: (usize, usize) = (1, 3);

/// What to do to the published copy of version `old` to make it version
/// `new`'s.
pub(super) struct Difference {
    /// Keys (the key columns, named as in the table) of the rows to delete:
    /// rows that left, and the old form of rows that changed.
    pub gone: Vec<RecordBatch>,
    /// Rows to copy in: rows that arrived and the new form of rows that
    /// changed.
    pub arrived: Vec<RecordBatch>,
    /// How many rows version `old` has: what the published table must hold
    /// before the difference is applied.
    pub old_rows: u64,
}

impl Difference {
    pub fn gone_rows(&self) -> u64 {
        self.gone.iter().map(|b| b.num_rows() as u64).sum()
    }

    pub fn arrived_rows(&self) -> u64 {
        self.arrived.iter().map(|b| b.num_rows() as u64).sum()
    }
}

/// Why a publication is not a difference (`Ok(Err(reason))` of
/// [`compute`]): the table is then replaced whole.
pub(super) type NotADifference = &'static str;

/// The difference between `source` at version `old` and `source` as it is,
/// on `keys`; `Ok(Err(why))` when publishing it as a difference would be
/// wrong or not worth it.
pub(super) async fn compute(
    source: &DeltaTable,
    old: u64,
    keys: &[String],
) -> Result<std::result::Result<Difference, NotADifference>> {
    let mut before = source.clone();
    if before.load_version(old).await.is_err() {
        return Ok(Err("the version it holds can no longer be read"));
    }
    if table_id(&before).is_none() || table_id(&before) != table_id(source) {
        return Ok(Err("the version it holds is of another Delta table"));
    }
    let ctx = lake::session();
    lake::register(&ctx, "o", &before).await?;
    lake::register(&ctx, "n", source).await?;
    let (o, n) = (
        ctx.table("o")
            .await
            .map_err(Error::datafusion("old rows"))?,
        ctx.table("n")
            .await
            .map_err(Error::datafusion("new rows"))?,
    );
    let (o_schema, n_schema) = (o.schema().as_arrow().clone(), n.schema().as_arrow().clone());
    if o_schema.fields().len() != n_schema.fields().len()
        || o_schema
            .fields()
            .iter()
            .zip(n_schema.fields())
            .any(|(a, b)| a.name() != b.name() || a.data_type() != b.data_type())
    {
        return Ok(Err("its columns changed"));
    }
    let columns: Vec<String> = n_schema.fields().iter().map(|f| f.name().clone()).collect();
    if keys.iter().any(|k| !columns.contains(k)) {
        return Ok(Err("a key is not a column"));
    }
    let count = |name: &str| {
        let ctx = &ctx;
        let sql = format!("SELECT count(*) FROM {name}");
        async move { crate::expectations::count_of(&lake::collect(ctx, &sql).await?) }
    };
    let (old_rows, new_rows) = (count("o").await?, count("n").await?);
    if source.version() == Some(old) {
        // The version it holds: nothing to do but check that it holds it.
        return Ok(Ok(Difference {
            gone: Vec::new(),
            arrived: Vec::new(),
            old_rows,
        }));
    }

    // Marker columns say which side a joined row has: a NULL key is no
    // proof that a side is missing.
    const OLD: &str = "medallion old row";
    const NEW: &str = "medallion new row";
    let on: Vec<String> = keys
        .iter()
        .map(|k| format!("o.{k} = n.{k}", k = ident(k)))
        .collect();
    let same: Vec<String> = columns
        .iter()
        .filter(|c| !keys.contains(c))
        .map(|c| format!("(o.{c} IS NOT DISTINCT FROM n.{c})", c = ident(c)))
        .collect();
    let differs = if same.is_empty() {
        String::new()
    } else {
        format!(" OR NOT ({})", same.join(" AND "))
    };
    let select: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("o.{} AS \"medallion gone {i}\"", ident(k)))
        .chain(
            columns
                .iter()
                .map(|c| format!("n.{c} AS {c}", c = ident(c))),
        )
        .chain([
            format!("o.{} AS {}", ident(OLD), ident(OLD)),
            format!("n.{} AS {}", ident(NEW), ident(NEW)),
        ])
        .collect();
    let sql = format!(
        "SELECT {} FROM (SELECT *, true AS {old} FROM o) o FULL JOIN (SELECT *, true AS {new} FROM n) n \
         ON {} WHERE o.{old} IS NULL OR n.{new} IS NULL{differs}",
        select.join(", "),
        on.join(" AND "),
        old = ident(OLD),
        new = ident(NEW),
    );
    let mut stream = ctx
        .sql(&sql)
        .await
        .map_err(Error::datafusion("plan the difference"))?
        .execute_stream()
        .await
        .map_err(Error::datafusion("compute the difference"))?;
    let most = (old_rows.max(new_rows) as usize) * MOST_CHANGED.0 / MOST_CHANGED.1;
    let (k, c) = (keys.len(), columns.len());
    let mut diff = Difference {
        gone: Vec::new(),
        arrived: Vec::new(),
        old_rows,
    };
    let mut changed = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = lake::without_views(&batch.map_err(Error::datafusion("the difference"))?)?;
        changed += batch.num_rows();
        if changed > most {
            return Ok(Err("more than a third of the rows changed"));
        }
        let side = |i: usize| -> Result<BooleanArray> {
            is_not_null(batch.column(i).as_ref()).map_err(Error::arrow("difference side"))
        };
        let gone = filter_record_batch(
            &batch
                .project(&(0..k).collect::<Vec<_>>())
                .map_err(Error::arrow("gone keys"))?,
            &side(k + c)?,
        )
        .map_err(Error::arrow("gone keys"))?;
        if gone.columns().iter().any(|a| a.null_count() > 0) {
            return Ok(Err("a key that changed or left is NULL"));
        }
        let gone = RecordBatch::try_new(
            std::sync::Arc::new(arrow::datatypes::Schema::new(
                gone.schema()
                    .fields()
                    .iter()
                    .zip(keys)
                    .map(|(f, name)| f.as_ref().clone().with_name(name))
                    .collect::<Vec<_>>(),
            )),
            gone.columns().to_vec(),
        )
        .map_err(Error::arrow("gone keys"))?;
        let arrived = filter_record_batch(
            &batch
                .project(&(k..k + c).collect::<Vec<_>>())
                .map_err(Error::arrow("arrived rows"))?,
            &side(k + c + 1)?,
        )
        .map_err(Error::arrow("arrived rows"))?;
        if gone.num_rows() > 0 {
            diff.gone.push(gone);
        }
        if arrived.num_rows() > 0 {
            diff.arrived.push(arrived);
        }
    }
    Ok(Ok(diff))
}

/// The identity of a Delta table: its metadata id, made when the table is
/// created. A version number names a state only within one table: a lake
/// rebuilt at the same path counts its versions again from 0.
pub(crate) fn table_id(table: &DeltaTable) -> Option<String> {
    Some(table.snapshot().ok()?.metadata().id().to_string())
}

/// The Delta table a published table's comment names
/// (`… (Delta table <id>) (Delta version N)`, see `refine::publish_one`).
pub(crate) fn table_in_comment(comment: &str) -> Option<&str> {
    let (_, rest) = comment.rsplit_once("(Delta table ")?;
    rest.split_once(')').map(|(id, _)| id)
}

/// The Delta version a published table's comment names
/// (`… (Delta version N)`, see `refine::publish_one`).
pub(crate) fn version_in_comment(comment: &str) -> Option<u64> {
    comment
        .strip_suffix(')')?
        .rsplit_once("(Delta version ")?
        .1
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_comment_names_the_version_it_holds() {
        assert_eq!(
            version_in_comment("medallion: gold.x at source LSN 0/16B3748 (Delta version 12)"),
            Some(12)
        );
        assert_eq!(
            version_in_comment("medallion: gold.x (Delta version -1)"),
            None
        );
        assert_eq!(version_in_comment("medallion: gold.x"), None);
        assert_eq!(version_in_comment("(Delta version 3) trailing"), None);
        let c = "medallion: gold.x at source LSN 0/1 (Delta table 5d6f-aa) (Delta version 4)";
        assert_eq!(table_in_comment(c), Some("5d6f-aa"));
        assert_eq!(version_in_comment(c), Some(4));
        assert_eq!(
            table_in_comment("medallion: gold.x (Delta version 4)"),
            None
        );
    }
}
