//! Publish a silver or gold table into Postgres, for tools that do not read
//! Delta (Superset, Power BI, PostgREST).
//!
//! One Postgres transaction replaces the table's contents: `DELETE` then
//! `COPY` of the Delta table's rows, then `COMMIT`. Under MVCC a reader sees
//! the previous contents until the commit and the new ones after it — never
//! a half-written table — and is not blocked meanwhile. The table keeps its
//! OID, grants and dependent views. When the columns change, the table is
//! dropped and recreated inside the same transaction.
//!
//! A table published with keys gets a unique index on them, and later
//! publications delete and copy only the rows that changed since the
//! version it holds ([`difference`]), as `REFRESH MATERIALIZED VIEW
//! CONCURRENTLY` does: less work, WAL and bloat on a big table where a
//! refresh changes a few rows. A keyed gold model's refresh hands over the
//! difference it wrote ([`difference::Handover`]), so the publication
//! that follows it computes nothing.

use std::pin::pin;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Schema, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::Bytes;
use deltalake::DeltaTable;
use futures::{SinkExt, StreamExt};
use tokio_postgres::Client;

use crate::catalog::Field;
use crate::error::{Error, Result};
use crate::lake;
use crate::lake::difference;

pub(crate) use difference::{table_id, table_in_comment, version_in_comment};

/// The Postgres type that holds an Arrow type without loss (text otherwise).
fn pg_type(t: &DataType) -> String {
    match t {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint".into(),
        DataType::Int32 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 => "bigint".into(),
        DataType::UInt64 => "numeric(20)".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("numeric({p},{s})"),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Timestamp(_, Some(_)) => "timestamptz".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Time32(_) | DataType::Time64(_) => "time".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        DataType::Interval(_) | DataType::Duration(_) => "interval".into(),
        // `array_agg(…)` and other lists: a Postgres array of the element's
        // type, as Postgres gives the same query (`text[]`, `integer[]`, …).
        DataType::List(f) | DataType::LargeList(f) if !f.data_type().is_nested() => {
            format!("{}[]", pg_type(f.data_type()))
        }
        _ => "text".into(),
    }
}

/// One list value as a Postgres array literal: elements in their text form,
/// quoted (with `\` and `"` escaped) when Postgres would quote them, NULL
/// elements as `NULL`.
fn array_literal(values: &dyn Array, opts: &FormatOptions) -> Result<String> {
    let f = ArrayFormatter::try_new(values, opts).map_err(Error::arrow("publish array"))?;
    let mut out = String::from("{");
    for i in 0..values.len() {
        if i > 0 {
            out.push(',');
        }
        if values.is_null(i) {
            out.push_str("NULL");
            continue;
        }
        let v = match values.data_type() {
            DataType::Boolean => (if values.as_boolean().value(i) {
                "t"
            } else {
                "f"
            })
            .into(),
            _ => f
                .value(i)
                .try_to_string()
                .map_err(Error::arrow("publish array element"))?,
        };
        let quote = v.is_empty()
            || v.eq_ignore_ascii_case("null")
            || v.chars()
                .any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || c.is_ascii_whitespace());
        if quote {
            out.push('"');
            out.push_str(&v.replace('\\', "\\\\").replace('"', "\\\""));
            out.push('"');
        } else {
            out.push_str(&v);
        }
    }
    out.push('}');
    Ok(out)
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// COPY text-format escaping of one value. The four escaped characters
/// are ASCII, so runs between them are copied whole.
fn escape(out: &mut String, s: &str) {
    let mut rest = s;
    while let Some(i) = rest.find(['\\', '\t', '\n', '\r']) {
        out.push_str(&rest[..i]);
        out.push_str(match rest.as_bytes()[i] {
            b'\\' => "\\\\",
            b'\t' => "\\t",
            b'\n' => "\\n",
            _ => "\\r",
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

/// Whether the text arrow renders for a value of this type can never hold
/// a character COPY escapes (numbers, dates, times), so it is written
/// straight into the COPY buffer.
fn renders_plain(t: &DataType) -> bool {
    t.is_integer()
        || t.is_floating()
        || matches!(
            t,
            DataType::Decimal32(..)
                | DataType::Decimal64(..)
                | DataType::Decimal128(..)
                | DataType::Decimal256(..)
                | DataType::Date32
                | DataType::Date64
                | DataType::Timestamp(..)
                | DataType::Time32(_)
                | DataType::Time64(_)
        )
}

fn copy_text(batch: &RecordBatch, out: &mut String) -> Result<()> {
    let opts = FormatOptions::default().with_display_error(false);
    // A column no formatter can render is an error: never published as NULL.
    let formatters: Vec<Option<ArrayFormatter>> = batch
        .columns()
        .iter()
        .zip(batch.schema().fields())
        .map(|(c, f)| match c.data_type() {
            DataType::Binary | DataType::Boolean => Ok(None),
            DataType::List(_) | DataType::LargeList(_) => Ok(None),
            DataType::Duration(TimeUnit::Microsecond) => Ok(None),
            _ => ArrayFormatter::try_new(c.as_ref(), &opts)
                .map(Some)
                .map_err(Error::arrow(format!("publish column {}", f.name()))),
        })
        .collect::<Result<_>>()?;
    let plain: Vec<bool> = batch
        .columns()
        .iter()
        .map(|c| renders_plain(c.data_type()))
        .collect();
    // One value's text before it is escaped (kept across values).
    let mut scratch = String::new();
    for r in 0..batch.num_rows() {
        for (i, c) in batch.columns().iter().enumerate() {
            if i > 0 {
                out.push('\t');
            }
            if c.is_null(r) {
                out.push_str("\\N");
                continue;
            }
            match c.data_type() {
                DataType::Boolean => out.push(if c.as_boolean().value(r) { 't' } else { 'f' }),
                DataType::Utf8 => escape(out, c.as_string::<i32>().value(r)),
                DataType::LargeUtf8 => escape(out, c.as_string::<i64>().value(r)),
                DataType::Utf8View => escape(out, c.as_string_view().value(r)),
                DataType::Binary => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.push_str("\\\\x");
                    for b in c.as_binary::<i32>().value(r) {
                        out.push(HEX[usize::from(b >> 4)] as char);
                        out.push(HEX[usize::from(b & 0xf)] as char);
                    }
                }
                DataType::List(_) => {
                    let v = array_literal(c.as_list::<i32>().value(r).as_ref(), &opts)?;
                    escape(out, &v)
                }
                DataType::LargeList(_) => {
                    let v = array_literal(c.as_list::<i64>().value(r).as_ref(), &opts)?;
                    escape(out, &v)
                }
                DataType::Duration(TimeUnit::Microsecond) => {
                    let us = c
                        .as_primitive::<arrow::datatypes::DurationMicrosecondType>()
                        .value(r);
                    out.push_str(&format!("{us} microseconds"));
                }
                _ => match &formatters[i] {
                    Some(f) => {
                        let failed = Error::arrow(format!(
                            "publish column {} row {r}",
                            batch.schema().field(i).name()
                        ));
                        if plain[i] {
                            f.value(r).write(out).map_err(failed)?;
                        } else {
                            scratch.clear();
                            f.value(r).write(&mut scratch).map_err(failed)?;
                            escape(out, &scratch)
                        }
                    }
                    None => {
                        return Err(Error::Protocol(format!(
                            "publish column {}: no text form for {}",
                            batch.schema().field(i).name(),
                            c.data_type()
                        )));
                    }
                },
            }
        }
        out.push('\n');
    }
    Ok(())
}

/// What a published table's comment starts with: the mark that it is ours.
const MARK: &str = "medallion: ";

/// Make sure the target schema exists. It is created only when missing:
/// `CREATE SCHEMA IF NOT EXISTS` needs the `CREATE` privilege on the
/// database even when the schema exists, and a role publishing into a
/// schema it was given need not have it. Publications that run at once
/// (`gold_parallelism`) into a schema that does not exist yet take turns on
/// a transaction lock, so the second sees the first's schema instead of
/// failing on a duplicate key.
async fn ensure_schema(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    table: &str,
) -> Result<()> {
    const EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)";
    let context = || format!("publish {schema}.{table}: create schema");
    let exists: bool = tx
        .query_one(EXISTS, &[&schema])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(Error::pg(context()))?;
    if exists {
        return Ok(());
    }
    tx.execute(
        "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('medallion publish schema'), \
                pg_catalog.hashtext($1))",
        &[&schema],
    )
    .await
    .map_err(Error::pg(context()))?;
    tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote(schema)))
        .await
        .map_err(Error::pg(context()))?;
    Ok(())
}

/// Refuse to write into anything that is not the sidecar's own: the schema
/// must be owned by the sidecar's role (it creates it), and an existing
/// table must be an ordinary table owned by that role and marked as a
/// medallion publication. Otherwise the sidecar would delete another role's
/// rows with its own privileges, or fire the triggers a squatter put on a
/// table it prepared in advance.
///
/// Returns the Delta version an existing publication says it holds.
async fn check_target(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    table: &str,
    table_id: Option<String>,
) -> Result<Option<u64>> {
    let row = tx
        .query_one(
            "SELECT n.nspowner = r.oid, pg_catalog.pg_get_userbyid(n.nspowner)::text, \
                    c.oid IS NOT NULL, c.relkind::text, c.relowner = r.oid, \
                    pg_catalog.pg_get_userbyid(c.relowner)::text, \
                    COALESCE(pg_catalog.starts_with(pg_catalog.obj_description(c.oid, 'pg_class'), $3), false), \
                    r.rolname::text, pg_catalog.obj_description(c.oid, 'pg_class') \
             FROM pg_catalog.pg_namespace n \
             JOIN pg_catalog.pg_roles r ON r.rolname = pg_catalog.current_user() \
             LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = $2 \
             WHERE n.nspname = $1",
            &[&schema, &table, &MARK],
        )
        .await
        .map_err(Error::pg(format!("publish {schema}.{table}: check target")))?;
    let me: String = row.field(7)?;
    let refuse = |reason: String| Error::PublishTarget {
        target: format!("{schema}.{table}"),
        reason,
        role: me.clone(),
    };
    if !row.field::<bool>(0)? {
        return Err(refuse(format!(
            "schema \"{schema}\" is owned by role \"{}\"",
            row.field::<String>(1)?
        )));
    }
    if row.field::<bool>(2)? {
        let kind: String = row.field(3)?;
        if kind != "r" {
            return Err(refuse(format!(
                "it exists and is not a table (relkind {kind})"
            )));
        }
        if !row.field::<bool>(4)? {
            return Err(refuse(format!(
                "the table exists and is owned by role \"{}\"",
                row.field::<String>(5)?
            )));
        }
        if !row.field::<bool>(6)? {
            return Err(refuse(
                "the table exists and is not a medallion publication (its comment does not start \
                 with \"medallion: \")"
                    .into(),
            ));
        }
        // The version it holds counts only within the table it came from.
        let comment: Option<String> = row.field(8)?;
        return Ok(comment.as_deref().and_then(|c| {
            (difference::table_in_comment(c).is_some()
                && difference::table_in_comment(c) == table_id.as_deref())
            .then(|| difference::version_in_comment(c))
            .flatten()
        }));
    }
    Ok(None)
}

/// How a publication brought the Postgres table to the Delta table's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Every row deleted (or the table created) and copied in again.
    Replaced { rows: u64 },
    /// Only the rows that changed: `deleted` old rows (left or changed),
    /// `inserted` new ones (arrived or changed); see [`difference`].
    /// `handed_over`: the refresh's difference, not computed here.
    Difference {
        deleted: u64,
        inserted: u64,
        handed_over: bool,
    },
}

/// Where a Delta table is published, and its keys.
pub struct Target<'a> {
    pub schema: &'a str,
    pub table: &'a str,
    /// Columns that identify a row (a gold model's `keys`, a current-state
    /// silver table's primary key): the published table gets a unique index
    /// on them and later publications copy only the rows that changed.
    pub keys: Option<&'a [String]>,
    /// The difference the refresh that wrote the Delta table computed, if
    /// any: used when it starts from the version the table holds.
    pub handover: Option<&'a difference::Handover>,
}

/// The COPY of `batches` into `target` (its columns `names`).
async fn copy_batches(
    tx: &tokio_postgres::Transaction<'_>,
    into: &str,
    names: &[String],
    mut batches: impl futures::Stream<Item = Result<RecordBatch>> + Unpin,
    what: &str,
) -> Result<u64> {
    let sink = tx
        .copy_in(&format!("COPY {into} ({}) FROM STDIN", names.join(", ")))
        .await
        .map_err(Error::pg(format!("publish {what}: copy")))?;
    let mut sink = pin!(sink);
    let mut buf = String::new();
    while let Some(batch) = batches.next().await {
        copy_text(&batch?, &mut buf)?;
        // The next batch's text starts at this one's size: no regrowing.
        let next = String::with_capacity(buf.len());
        sink.send(Bytes::from(std::mem::replace(&mut buf, next)))
            .await
            .map_err(Error::pg(format!("publish {what}: copy data")))?;
    }
    sink.as_mut()
        .finish()
        .await
        .map_err(Error::pg(format!("publish {what}: copy end")))
}

/// Whether `target` has a valid unique index on exactly `keys` (in order,
/// no expression, no predicate) and this role may create temporary tables:
/// what a publication by difference needs.
async fn can_apply_difference(
    tx: &tokio_postgres::Transaction<'_>,
    target: &str,
    keys: &[String],
) -> Result<bool> {
    let row = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                 WHERE i.indrelid = pg_catalog.to_regclass($1) AND i.indisunique AND i.indisvalid \
                   AND i.indexprs IS NULL AND i.indpred IS NULL \
                   AND ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, n) \
                             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                             ORDER BY k.n) = $2::text[]) \
                AND pg_catalog.has_database_privilege(pg_catalog.current_database(), 'TEMPORARY')",
            &[&target, &keys],
        )
        .await
        .map_err(Error::pg(format!("publish {target}: read its key index")))?;
    row.field(0)
}

/// Create the unique index on `keys` a publication by difference needs,
/// unless it is there. Rows that are not unique on the keys leave the table
/// without it (and so replaced whole every time), with a warning.
async fn ensure_key_index(
    tx: &mut tokio_postgres::Transaction<'_>,
    schema: &str,
    table: &str,
    target: &str,
    keys: &[String],
) -> Result<()> {
    if can_apply_difference(tx, target, keys).await? {
        return Ok(());
    }
    let sp = tx
        .savepoint("medallion_key_index")
        .await
        .map_err(Error::pg(format!("publish {target}: savepoint")))?;
    let cols: Vec<String> = keys.iter().map(|k| quote(k)).collect();
    let made = sp
        .batch_execute(&format!(
            "CREATE UNIQUE INDEX {} ON {target} ({})",
            quote(&format!("{table}_medallion_keys")),
            cols.join(", ")
        ))
        .await;
    match made {
        Ok(()) => sp
            .commit()
            .await
            .map_err(Error::pg(format!("publish {target}: release savepoint"))),
        Err(e) => {
            tracing::warn!(
                target = %format!("{schema}.{table}"), keys = ?keys, error = %e,
                "no unique index on the keys: the table is replaced whole at every publication"
            );
            sp.rollback()
                .await
                .map_err(Error::pg(format!("publish {target}: roll back savepoint")))
        }
    }
}

/// Apply `diff` to `target` inside a savepoint; `false` (rolled back) when
/// the table does not hold the rows the difference was computed from, or
/// Postgres refused a step (a key changed by hand that now collides): the
/// caller then replaces the table whole in the same transaction.
async fn apply_difference(
    tx: &mut tokio_postgres::Transaction<'_>,
    target: &str,
    names: &[String],
    keys: &[String],
    diff: difference::Difference,
) -> Result<bool> {
    let sp = tx
        .savepoint("medallion_difference")
        .await
        .map_err(Error::pg(format!("publish {target}: savepoint")))?;
    let old_rows = diff.old_rows;
    let expected = diff.gone_rows();
    let applied = async {
        let held: i64 = sp
            .query_one(&format!("SELECT count(*) FROM {target}"), &[])
            .await
            .map_err(Error::pg(format!("publish {target}: count rows")))?
            .field(0)?;
        if held as u64 != old_rows {
            return Ok(Err(format!("it holds {held} rows, not {old_rows}")));
        }
        if expected > 0 {
            const GONE: &str = "pg_temp.\"medallion gone\"";
            let cols: Vec<String> = keys.iter().map(|k| quote(k)).collect();
            sp.batch_execute(&format!(
                "CREATE TEMPORARY TABLE {GONE} ON COMMIT DROP AS SELECT {} FROM {target} WITH NO DATA",
                cols.join(", ")
            ))
            .await
            .map_err(Error::pg(format!("publish {target}: gone keys table")))?;
            let gone = futures::stream::iter(diff.gone.into_iter().map(Ok));
            copy_batches(&sp, GONE, &cols, gone, target).await?;
            let on: Vec<String> = cols.iter().map(|c| format!("t.{c} = g.{c}")).collect();
            let deleted = sp
                .execute(
                    &format!(
                        "DELETE FROM {target} t USING {GONE} g WHERE {}",
                        on.join(" AND ")
                    ),
                    &[],
                )
                .await
                .map_err(Error::pg(format!("publish {target}: delete changed rows")))?;
            if deleted != expected {
                return Ok(Err(format!(
                    "{expected} keys that changed or left deleted {deleted} rows"
                )));
            }
            sp.batch_execute(&format!("DROP TABLE {GONE}"))
                .await
                .map_err(Error::pg(format!("publish {target}: drop gone keys")))?;
        }
        let arrived = futures::stream::iter(diff.arrived.into_iter().map(Ok));
        copy_batches(&sp, target, names, arrived, target).await?;
        Ok::<_, Error>(Ok(()))
    }
    .await;
    let why = match applied {
        Ok(Ok(())) => {
            sp.commit()
                .await
                .map_err(Error::pg(format!("publish {target}: release savepoint")))?;
            return Ok(true);
        }
        Ok(Err(why)) => {
            format!("the published table does not hold the rows it was published with: {why}")
        }
        Err(e) => format!("Postgres refused the difference: {e}"),
    };
    tracing::warn!(target = %target, %why, "publishing by difference failed: replacing the table whole");
    // A broken connection fails here, and so the publication.
    sp.rollback()
        .await
        .map_err(Error::pg(format!("publish {target}: roll back savepoint")))?;
    Ok(false)
}

/// Make `schema.table` in Postgres hold the rows of a Delta table, in one
/// transaction: by difference when it can ([`difference`]), else by
/// replacing every row.
pub async fn publish(
    client: &mut Client,
    source: &DeltaTable,
    to: &Target<'_>,
    comment: &str,
) -> Result<Published> {
    let (schema, table) = (to.schema, to.table);
    let started = std::time::Instant::now();
    // Milliseconds to the end of: the checks, the comparison, the writes.
    let mut phases = [0u128; 3];
    let ctx = lake::session();
    lake::register(&ctx, "t", source).await?;
    let df = ctx
        .table("t")
        .await
        .map_err(Error::datafusion("publish source"))?;
    let arrow_schema: Schema = df.schema().as_arrow().clone();
    let columns: Vec<(String, String)> = arrow_schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), pg_type(f.data_type())))
        .collect();
    let target = format!("{}.{}", quote(schema), quote(table));
    let mut tx = client
        .transaction()
        .await
        .map_err(Error::pg(format!("publish {schema}.{table}: begin")))?;
    ensure_schema(&tx, schema, table).await?;
    let held_version = check_target(&tx, schema, table, difference::table_id(source)).await?;
    let existing: Vec<(String, String)> = tx
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&schema, &table],
        )
        .await
        .map_err(Error::pg(format!("publish {schema}.{table}: read columns")))?
        .into_iter()
        .map(|r| Ok((r.field(0)?, r.field(1)?)))
        .collect::<Result<_>>()?;
    let same = existing.len() == columns.len()
        && existing.iter().zip(&columns).all(|(a, b)| {
            a.0 == b.0
                && (a.1 == b.1
                    || a.1.replace(' ', "") == b.1.replace(' ', "")
                    || (a.1 == "timestamp with time zone" && b.1 == "timestamptz")
                    || (a.1 == "timestamp without time zone" && b.1 == "timestamp")
                    || (a.1 == "time without time zone" && b.1 == "time"))
        });
    let names: Vec<String> = columns.iter().map(|(n, _)| quote(n)).collect();
    let mut published = None;
    if let (true, Some(keys), Some(old)) = (same, to.keys, held_version)
        && can_apply_difference(&tx, &target, keys).await?
    {
        phases[0] = started.elapsed().as_millis();
        let handed = to.handover.and_then(|h| h.leading_from(old, source, keys));
        let diff = match handed {
            Some(d) => Ok(Ok(d.clone())),
            None => difference::between_versions(source, old, keys).await,
        };
        phases[1] = started.elapsed().as_millis();
        match diff {
            Ok(Ok(diff)) => {
                let (deleted, inserted) = (diff.gone_rows(), diff.arrived_rows());
                if apply_difference(&mut tx, &target, &names, keys, diff).await? {
                    published = Some(Published::Difference {
                        deleted,
                        inserted,
                        handed_over: handed.is_some(),
                    });
                }
            }
            Ok(Err(why)) => {
                tracing::debug!(target = %format!("{schema}.{table}"), why, "published whole")
            }
            Err(e) => tracing::warn!(
                target = %format!("{schema}.{table}"), error = %e,
                "the difference could not be computed: the table is replaced whole"
            ),
        }
    }
    let published = match published {
        Some(p) => p,
        None => {
            if same {
                tx.batch_execute(&format!("DELETE FROM {target}"))
                    .await
                    .map_err(Error::pg(format!("publish {schema}.{table}: delete")))?;
            } else {
                let defs: Vec<String> = columns
                    .iter()
                    .map(|(n, t)| format!("{} {t}", quote(n)))
                    .collect();
                tx.batch_execute(&format!(
                    "DROP TABLE IF EXISTS {target}; CREATE TABLE {target} ({})",
                    defs.join(", ")
                ))
                .await
                .map_err(Error::pg(format!("publish {schema}.{table}: create table")))?;
            }
            let stream = df
                .execute_stream()
                .await
                .map_err(Error::datafusion("publish read"))?
                .map(|b| b.map_err(Error::datafusion("publish read")));
            let rows =
                copy_batches(&tx, &target, &names, stream, &format!("{schema}.{table}")).await?;
            if let Some(keys) = to.keys {
                ensure_key_index(&mut tx, schema, table, &target, keys).await?;
            }
            Published::Replaced { rows }
        }
    };
    phases[2] = started.elapsed().as_millis();
    tx.batch_execute(&format!(
        "COMMENT ON TABLE {target} IS '{}'",
        comment.replace('\'', "''")
    ))
    .await
    .map_err(Error::pg(format!("publish {schema}.{table}: comment")))?;
    crate::fault::hit(crate::fault::BEFORE_PUBLISH_COMMIT);
    tx.commit()
        .await
        .map_err(Error::pg(format!("publish {schema}.{table}: commit")))?;
    tracing::debug!(
        target = %format!("{schema}.{table}"),
        checked_ms = phases[0],
        compared_ms = phases[1],
        written_ms = phases[2],
        committed_ms = started.elapsed().as_millis(),
        "publication phases (from its start)"
    );
    Ok(published)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The text of every plain type, written straight into the buffer, and
    /// of every string type, escaped from the array, is what arrow's
    /// formatter renders escaped character by character.
    #[test]
    fn copy_text_writes_what_the_formatter_renders_escaped() {
        use arrow::array::*;
        use arrow::datatypes::i256;
        let texts = [
            Some("plain"),
            Some("tab\there\\back\nnew\rret"),
            Some("Zoë — 東京 \t"),
            None,
            Some(""),
        ];
        let batch = RecordBatch::try_from_iter(vec![
            ("s", Arc::new(StringArray::from(texts.to_vec())) as ArrayRef),
            ("l", Arc::new(LargeStringArray::from(texts.to_vec())) as _),
            ("v", Arc::new(StringViewArray::from(texts.to_vec())) as _),
            (
                "i",
                Arc::new(Int64Array::from(vec![
                    Some(-1),
                    Some(i64::MAX),
                    None,
                    Some(0),
                    Some(7),
                ])) as _,
            ),
            (
                "f",
                Arc::new(Float64Array::from(vec![
                    Some(1.5),
                    Some(f64::NAN),
                    Some(-0.0),
                    None,
                    Some(1e300),
                ])) as _,
            ),
            (
                "d",
                Arc::new(
                    Decimal128Array::from(vec![
                        Some(-12345),
                        Some(0),
                        None,
                        Some(1),
                        Some(i128::MAX / 10),
                    ])
                    .with_precision_and_scale(38, 4)
                    .unwrap(),
                ) as _,
            ),
            (
                "w",
                Arc::new(
                    Decimal256Array::from(vec![
                        Some(i256::from_i128(-5)),
                        None,
                        Some(i256::MAX),
                        Some(i256::ZERO),
                        Some(i256::ONE),
                    ])
                    .with_precision_and_scale(76, 24)
                    .unwrap(),
                ) as _,
            ),
            (
                "day",
                Arc::new(Date32Array::from(vec![
                    Some(0),
                    Some(-1),
                    Some(20_000),
                    None,
                    Some(2_932_896),
                ])) as _,
            ),
            (
                "at",
                Arc::new(
                    TimestampMicrosecondArray::from(vec![
                        Some(0),
                        None,
                        Some(1_700_000_000_123_456),
                        Some(-1),
                        Some(86_400_000_000),
                    ])
                    .with_timezone("UTC"),
                ) as _,
            ),
            (
                "local",
                Arc::new(TimestampMicrosecondArray::from(vec![
                    Some(1),
                    Some(2),
                    None,
                    Some(3),
                    Some(4),
                ])) as _,
            ),
            (
                "b",
                Arc::new(BinaryArray::from(vec![
                    Some(&b"\x00\xff\t"[..]),
                    None,
                    Some(b""),
                    Some(b"ab"),
                    Some(b"\\"),
                ])) as _,
            ),
        ])
        .unwrap();
        let mut ours = String::new();
        copy_text(&batch, &mut ours).unwrap();

        // The reference: every value through arrow's formatter, escaped
        // one character at a time.
        let opts = FormatOptions::default().with_display_error(false);
        let mut reference = String::new();
        for r in 0..batch.num_rows() {
            for (i, c) in batch.columns().iter().enumerate() {
                if i > 0 {
                    reference.push('\t');
                }
                if c.is_null(r) {
                    reference.push_str("\\N");
                    continue;
                }
                let v = match c.data_type() {
                    DataType::Binary => {
                        let hex: String = c
                            .as_binary::<i32>()
                            .value(r)
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect();
                        reference.push_str("\\\\x");
                        reference.push_str(&hex);
                        continue;
                    }
                    _ => ArrayFormatter::try_new(c.as_ref(), &opts)
                        .unwrap()
                        .value(r)
                        .try_to_string()
                        .unwrap(),
                };
                for ch in v.chars() {
                    match ch {
                        '\\' => reference.push_str("\\\\"),
                        '\t' => reference.push_str("\\t"),
                        '\n' => reference.push_str("\\n"),
                        '\r' => reference.push_str("\\r"),
                        c => reference.push(c),
                    }
                }
            }
            reference.push('\n');
        }
        assert_eq!(ours, reference);
        assert!(ours.contains("tab\\there\\\\back\\nnew\\rret"), "{ours}");
        assert!(ours.contains("\\\\x00ff09"), "{ours}");
    }

    #[test]
    fn copy_text_escapes_and_nulls() {
        let batch = RecordBatch::try_from_iter(vec![
            (
                "a",
                Arc::new(arrow::array::StringArray::from(vec![
                    Some("x\ty\\z\n"),
                    None,
                ])) as arrow::array::ArrayRef,
            ),
            (
                "b",
                Arc::new(arrow::array::BooleanArray::from(vec![
                    Some(true),
                    Some(false),
                ])) as _,
            ),
        ])
        .unwrap();
        let mut out = String::new();
        copy_text(&batch, &mut out).unwrap();
        assert_eq!(out, "x\\ty\\\\z\\n\tt\n\\N\tf\n");

        // A value its formatter cannot render fails the publication; it is
        // never written as NULL or as an empty string.
        let batch = RecordBatch::try_from_iter(vec![(
            "at",
            Arc::new(arrow::array::TimestampMicrosecondArray::from(vec![
                Some(0),
                Some(i64::MAX),
            ])) as arrow::array::ArrayRef,
        )])
        .unwrap();
        let mut out = String::new();
        let e = copy_text(&batch, &mut out).expect_err("an unrenderable timestamp");
        assert!(e.to_string().contains("publish column at row 1"), "{e}");
        assert_eq!(pg_type(&DataType::Decimal128(38, 24)), "numeric(38,24)");

        // A list is a Postgres array: elements quoted only where Postgres
        // quotes them.
        let mut names = arrow::array::ListBuilder::new(arrow::array::StringBuilder::new());
        names.values().append_value("S001");
        names.values().append_value("a b");
        names.values().append_null();
        names.values().append_value("q\"\\");
        names.values().append_value("");
        names.append(true);
        names.append(false);
        let names = names.finish();
        assert_eq!(pg_type(names.data_type()), "text[]");
        let batch =
            RecordBatch::try_from_iter(vec![("n", Arc::new(names) as arrow::array::ArrayRef)])
                .unwrap();
        let mut out = String::new();
        copy_text(&batch, &mut out).unwrap();
        assert_eq!(out, "{S001,\"a b\",NULL,\"q\\\\\"\\\\\\\\\",\"\"}\n\\N\n");
        assert_eq!(
            pg_type(&DataType::Timestamp(
                TimeUnit::Microsecond,
                Some("UTC".into())
            )),
            "timestamptz"
        );
    }
}
