//! Comparisons with Postgres itself: rows read back from the lake are
//! loaded into a check table with the source's column types and compared
//! with the source both ways (`EXCEPT ALL`), so every value is compared by
//! Postgres' own equality and nothing is lost or duplicated unnoticed.

use std::collections::HashMap;

use futures::SinkExt;

use crate::lake;

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The columns of `schema.table` (name, `format_type`), in order.
pub async fn source_columns(
    client: &tokio_postgres::Client,
    schema: &str,
    table: &str,
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = format('%I.%I', $1::text, $2::text)::regclass AND attnum > 0 \
               AND NOT attisdropped ORDER BY attnum",
            &[&schema, &table],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Whether `rows` (column → Postgres text) equal the rows of `schema.table`
/// (`ONLY`, so partitions' parents compare their own rows). `Err` says what
/// differs, with up to five example rows.
pub async fn rows_equal_source<'r>(
    client: &tokio_postgres::Client,
    schema: &str,
    table: &str,
    cols: &[(String, String)],
    rows: impl Iterator<Item = &'r HashMap<String, Option<String>>>,
) -> Result<(), String> {
    let q = quote;
    let chk = q(&format!("chk_{schema}_{table}"));
    let qcols = cols
        .iter()
        .map(|(c, _)| q(c))
        .collect::<Vec<_>>()
        .join(", ");
    let db = |e: tokio_postgres::Error| match e.as_db_error() {
        Some(d) => format!("{e}: {}", d.message()),
        None => e.to_string(),
    };
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS medallion_check; DROP TABLE IF EXISTS medallion_check.{chk}; \
             CREATE TABLE medallion_check.{chk} ({})",
            cols.iter()
                .map(|(c, t)| format!("{} {t}", q(c)))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await
        .map_err(db)?;
    let sink = client
        .copy_in(&format!("COPY medallion_check.{chk} ({qcols}) FROM STDIN"))
        .await
        .map_err(db)?;
    futures::pin_mut!(sink);
    let mut buf = String::new();
    for values in rows {
        let line: Vec<String> = cols
            .iter()
            .map(|(c, _)| lake::copy_escape(&values.get(c).cloned().flatten()))
            .collect();
        buf.push_str(&line.join("\t"));
        buf.push('\n');
        if buf.len() > 1 << 20 {
            sink.send(bytes::Bytes::from(std::mem::take(&mut buf)))
                .await
                .map_err(db)?;
        }
    }
    sink.send(bytes::Bytes::from(buf)).await.map_err(db)?;
    sink.finish().await.map_err(db)?;
    let comparable = cols
        .iter()
        .map(|(c, t)| {
            if t == "json" || t == "xml" || t.starts_with("point") {
                format!("{}::text", q(c))
            } else {
                q(c)
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let src = format!("ONLY {}.{}", q(schema), q(table));
    let dst = format!("medallion_check.{chk}");
    for (a, b, what) in [(&src, &dst, "missing from"), (&dst, &src, "extra in")] {
        let diff = client
            .query(
                &format!(
                    "SELECT ({comparable})::text FROM (SELECT {comparable} FROM {a} EXCEPT ALL SELECT {comparable} FROM {b}) d LIMIT 5"
                ),
                &[],
            )
            .await
            .map_err(db)?;
        let sample: Vec<String> = diff.iter().map(|r| r.get(0)).collect();
        if !sample.is_empty() {
            return Err(format!("rows {what} the lake's copy, e.g. {sample:#?}"));
        }
    }
    Ok(())
}
