//! What to replicate: the publication's tables, their columns and types, and
//! pending resync requests from the `medallion` catalog.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::bronze::TableId;
use crate::error::{Error, Result};
use crate::typemap::{self, Kind};

/// A published table as the sidecar sees it.
#[derive(Debug, Clone)]
pub struct PublishedTable {
    pub id: TableId,
    pub oid: u32,
    pub partitioned: bool,
    /// Column list of the publication (None = all columns).
    pub columns: Option<Vec<String>>,
    /// Row filter of the publication (PG15), as Postgres prints it.
    pub row_filter: Option<String>,
    /// A resync request not yet served (µs since the Unix epoch).
    pub resync_requested_us: Option<i64>,
}

/// Whether the `medallion` extension is installed in this database.
pub async fn extension_installed(client: &Client) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_medallion')",
            &[],
        )
        .await
        .map_err(Error::pg("check extension"))?;
    Ok(row.get(0))
}

/// The tables of `publication`, with resync requests when the extension is present.
pub async fn published_tables(
    client: &Client,
    publication: &str,
    with_extension: bool,
) -> Result<Vec<PublishedTable>> {
    let exists = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&publication],
        )
        .await
        .map_err(Error::pg("check publication"))?;
    if !exists.get::<_, bool>(0) {
        return Err(Error::Config(format!(
            "publication \"{publication}\" does not exist. Declare sources with \
             SELECT medallion.add_source('schema.table'); (it creates the publication), \
             or CREATE PUBLICATION {publication} FOR TABLE ..."
        )));
    }
    let resync_sql = if with_extension {
        "(SELECT (extract(epoch FROM s.resync_requested_at) * 1000000)::bigint FROM medallion.sources s \
          WHERE s.source_schema = p.schemaname AND s.source_table = p.tablename)"
    } else {
        "NULL::bigint"
    };
    let sql = format!(
        "SELECT p.schemaname::text, p.tablename::text, c.oid::int8, c.relkind = 'p', \
                p.attnames::text[], p.rowfilter, {resync_sql}, \
                (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) \
         FROM pg_publication_tables p \
         JOIN pg_namespace n ON n.nspname = p.schemaname \
         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename \
         WHERE p.pubname = $1 ORDER BY 1, 2"
    );
    let rows = client
        .query(&sql, &[&publication])
        .await
        .map_err(Error::pg("list publication tables"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let attnames: Option<Vec<String>> = r.get(4);
            let ncols: i64 = r.get(7);
            // PG15 lists all columns when there is no column list.
            let columns = attnames.filter(|a| a.len() as i64 != ncols);
            PublishedTable {
                id: TableId {
                    schema: r.get(0),
                    table: r.get(1),
                },
                oid: r.get::<_, i64>(2) as u32,
                partitioned: r.get(3),
                columns,
                row_filter: r.get(5),
                resync_requested_us: r.get(6),
            }
        })
        .collect())
}

/// Resolves type OIDs (domains to their base type, enums) for the type map.
#[derive(Default)]
pub struct TypeResolver {
    /// oid → (base oid, base typmod, typtype)
    cache: HashMap<u32, (u32, i32, char)>,
    warned: std::collections::HashSet<u32>,
}

impl TypeResolver {
    /// Bronze kind of a column of type `oid` with `typmod`.
    pub async fn kind(
        &mut self,
        client: &Client,
        table: &TableId,
        column: &str,
        oid: u32,
        typmod: i32,
        numeric_scale: i8,
    ) -> Result<Kind> {
        if typemap::is_builtin(oid) {
            let m = typemap::map_type(oid, typmod, numeric_scale);
            if m.unknown_type {
                self.warn(table, column, oid);
            }
            return Ok(m.kind);
        }
        let (base, base_mod, typtype) = match self.cache.get(&oid) {
            Some(v) => *v,
            None => {
                let row = client
                    .query_opt(
                        "SELECT typtype::text, typbasetype::int8, typtypmod FROM pg_type WHERE oid = $1::int8::oid",
                        &[&(oid as i64)],
                    )
                    .await
                    .map_err(Error::pg("look up column type"))?;
                let v = match row {
                    Some(r) => {
                        let t: String = r.get(0);
                        (
                            r.get::<_, i64>(1) as u32,
                            r.get::<_, i32>(2),
                            t.chars().next().unwrap_or('b'),
                        )
                    }
                    None => (0, -1, 'b'),
                };
                self.cache.insert(oid, v);
                v
            }
        };
        match typtype {
            'd' if base != 0 => {
                let m = if typmod >= 0 { typmod } else { base_mod };
                Box::pin(self.kind(client, table, column, base, m, numeric_scale)).await
            }
            'e' => Ok(Kind::Text),
            _ => {
                self.warn(table, column, oid);
                Ok(Kind::Text)
            }
        }
    }

    fn warn(&mut self, table: &TableId, column: &str, oid: u32) {
        if self.warned.insert(oid) {
            tracing::warn!(
                %table, column, type_oid = oid,
                "type has no dedicated bronze mapping: stored as its Postgres text form (lossless)"
            );
        }
    }
}

/// Columns of a table (optionally restricted to a column list) with their
/// type OIDs and typmods, in attribute order.
pub async fn table_columns(
    client: &Client,
    oid: u32,
    only: Option<&[String]>,
) -> Result<Vec<(String, u32, i32)>> {
    let rows = client
        .query(
            "SELECT attname::text, atttypid::int8, atttypmod FROM pg_attribute \
             WHERE attrelid = $1::int8::oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&(oid as i64)],
        )
        .await
        .map_err(Error::pg("read table columns"))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, i64>(1) as u32,
                r.get::<_, i32>(2),
            )
        })
        .filter(|(n, _, _)| only.is_none_or(|cols| cols.iter().any(|c| c == n)))
        .collect())
}

/// Connect a regular (non-replication) session with stable output formats.
pub async fn connect(
    url: &str,
) -> Result<(
    Client,
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
)> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(Error::pg(format!(
            "connect to {}",
            crate::error::scrub_url(url)
        )))?;
    Ok((client, conn))
}

/// Settings every medallion session uses so text output parses the same way
/// as pgoutput's.
pub const SESSION_SETUP: &str = "SET datestyle = 'ISO, YMD'; SET intervalstyle = 'postgres'; \
    SET extra_float_digits = 3; SET bytea_output = 'hex'; SET application_name = 'medallion'";
