//! What to replicate: the publication's tables, their columns and types, and
//! pending resync requests from the `medallion` catalog.

use std::collections::HashMap;

use tokio_postgres::types::FromSql;
use tokio_postgres::{Client, Row};

use crate::bronze::TableId;
use crate::error::{Error, Result};
use crate::typemap::{self, Kind};

/// Reading a column of a row the sidecar queried.
pub trait Field {
    /// Column `idx` as `T`. A NULL where `T` is not an `Option`, or another
    /// type than the query promises (an extension of another version, a
    /// catalog row edited by hand), is an error naming the column — never a
    /// panic.
    fn field<'a, T: FromSql<'a>>(&'a self, idx: usize) -> Result<T>;
}

impl Field for Row {
    fn field<'a, T: FromSql<'a>>(&'a self, idx: usize) -> Result<T> {
        self.try_get(idx).map_err(|source| Error::RowValue {
            column: self
                .columns()
                .get(idx)
                .map(|c| c.name().to_string())
                .unwrap_or_else(|| format!("column {idx}")),
            source,
        })
    }
}

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
    row.field(0)
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
    if !exists.field::<bool>(0)? {
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
    rows.iter()
        .map(|r| {
            let attnames: Option<Vec<String>> = r.field(4)?;
            let ncols: i64 = r.field(7)?;
            // PG15 lists all columns when there is no column list.
            let columns = attnames.filter(|a| a.len() as i64 != ncols);
            Ok(PublishedTable {
                id: TableId {
                    schema: r.field(0)?,
                    table: r.field(1)?,
                },
                oid: r.field::<i64>(2)? as u32,
                partitioned: r.field(3)?,
                columns,
                row_filter: r.field(5)?,
                resync_requested_us: r.field(6)?,
            })
        })
        .collect()
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
                        let t: String = r.field(0)?;
                        (
                            r.field::<i64>(1)? as u32,
                            r.field::<i32>(2)?,
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
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let column = (
            r.field::<String>(0)?,
            r.field::<i64>(1)? as u32,
            r.field::<i32>(2)?,
        );
        if only.is_none_or(|cols| cols.contains(&column.0)) {
            out.push(column);
        }
    }
    Ok(out)
}

/// Settings pinned at connection start on every sidecar session, whatever
/// the database's or role's defaults say (`ALTER DATABASE … SET
/// search_path` is a database owner's to set, and would otherwise decide
/// which function an unqualified name in the sidecar's SQL runs): names
/// resolve in `pg_catalog` only (temporary objects last), and no
/// row-level-security policy filters a read silently — a copy that RLS would
/// filter fails with 42501 instead of losing rows.
pub(crate) const PINNED_OPTIONS: &str =
    "-c search_path=pg_catalog,pg_temp -c row_security=off -c standard_conforming_strings=on";

/// The connection half of a regular session: TLS by [`crate::tls`] when the
/// URL's `sslmode` asks for it (or the server offers it under `prefer`).
pub type SessionConnection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
        tokio_postgres::Socket,
    >>::Stream,
>;

/// Connect a regular (non-replication) session with stable output formats
/// and [`PINNED_OPTIONS`], honouring `sslmode`/`sslrootcert` as libpq and the
/// replication connection do.
pub async fn connect(url: &str) -> Result<(Client, SessionConnection)> {
    let split = crate::tls::split(url)?;
    let mut config: tokio_postgres::Config = split.rest.parse().map_err(Error::pg(format!(
        "connection string {}",
        crate::error::describe_conninfo(url)
    )))?;
    config.ssl_mode(crate::tls::driver_mode(split.policy.mode));
    let options = match config.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {PINNED_OPTIONS}"),
        _ => PINNED_OPTIONS.to_string(),
    };
    config.options(&options);
    let (client, conn) = config
        .connect(crate::tls::connector(&split.policy)?)
        .await
        .map_err(Error::pg(format!(
            "connect to {} ({})",
            crate::error::describe_conninfo(url),
            split.policy
        )))?;
    Ok((client, conn))
}

/// A session of its own for one job (a copy, the lease): connected with
/// [`connect`], its connection driven by a task, [`SESSION_SETUP`] applied.
/// Dropping the client ends the session; abort the task to stop at once.
pub(crate) async fn session(url: &str, job: &str) -> Result<(Client, tokio::task::JoinHandle<()>)> {
    let (client, conn) = connect(url).await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    client
        .batch_execute(SESSION_SETUP)
        .await
        .map_err(Error::pg(format!("{job} session setup")))?;
    Ok((client, task))
}

/// Settings every medallion session uses so text output parses the same way
/// as pgoutput's.
pub const SESSION_SETUP: &str = "SET datestyle = 'ISO, YMD'; SET intervalstyle = 'postgres'; \
    SET extra_float_digits = 3; SET bytea_output = 'hex'; SET application_name = 'medallion'";

/// What a silver table keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// The current state: one row per key.
    Current,
    /// Type-2 slowly changing dimension: one row per version.
    Scd2,
}

/// What happens to a row that fails an expectation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnViolation {
    Warn,
    Drop,
    Fail,
}

impl OnViolation {
    pub fn as_str(self) -> &'static str {
        match self {
            OnViolation::Warn => "warn",
            OnViolation::Drop => "drop",
            OnViolation::Fail => "fail",
        }
    }
}

/// A data-quality rule on a silver table or gold model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    pub name: String,
    pub predicate: String,
    pub on_violation: OnViolation,
}

/// A silver table definition (`medallion.silver_tables`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilverDef {
    pub name: String,
    pub source: TableId,
    pub keys: Vec<String>,
    pub history: History,
    pub track_columns: Option<Vec<String>>,
    pub soft_delete: bool,
    pub expectations: Vec<Expectation>,
    /// Publish to Postgres (`medallion.publications`).
    pub publish: Option<Publication>,
}

/// Where a silver table or gold model is published in Postgres
/// (`medallion.publish`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub schema: String,
    pub table: String,
    /// The columns that identify a published row (`publish(…, keys => …)`);
    /// None: the model's or table's own keys, if any.
    pub keys: Option<Vec<String>>,
}

impl Publication {
    /// `schema.table`, as people read it.
    pub fn target(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// When a gold model is recomputed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// After any table it reads advances.
    OnChange,
    /// Only on `medallion.refresh(name)`.
    Manual,
    /// When its inputs advanced and the last refresh is this old.
    Interval(std::time::Duration),
}

/// A gold model definition (`medallion.gold_models`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldDef {
    pub name: String,
    pub query: String,
    pub refresh: Refresh,
    pub keys: Option<Vec<String>>,
    /// Tables it reads: `silver.<name>` / `gold.<name>`.
    pub upstream: Vec<String>,
    pub expectations: Vec<Expectation>,
    pub publish: Option<Publication>,
}

/// Every silver and gold definition, gold in dependency order.
pub async fn refined_definitions(client: &Client) -> Result<(Vec<SilverDef>, Vec<GoldDef>)> {
    let expectations = client
        .query(
            "SELECT target, name, predicate, on_violation FROM medallion.expectations ORDER BY target, name",
            &[],
        )
        .await
        .map_err(Error::pg("read medallion.expectations"))?;
    let mut rules: HashMap<String, Vec<Expectation>> = HashMap::new();
    for r in expectations {
        let on: String = r.field(3)?;
        rules.entry(r.field(0)?).or_default().push(Expectation {
            name: r.field(1)?,
            predicate: r.field(2)?,
            on_violation: match on.as_str() {
                "drop" => OnViolation::Drop,
                "fail" => OnViolation::Fail,
                _ => OnViolation::Warn,
            },
        });
    }
    let publications = client
        .query(
            "SELECT node, target_schema::text, target_table::text, keys FROM medallion.publications",
            &[],
        )
        .await
        .map_err(Error::pg("read medallion.publications"))?;
    let mut publish: HashMap<String, Publication> = publications
        .into_iter()
        .map(|r| {
            Ok((
                r.field(0)?,
                Publication {
                    schema: r.field(1)?,
                    table: r.field(2)?,
                    keys: r.field(3)?,
                },
            ))
        })
        .collect::<Result<_>>()?;
    let silver = client
        .query(
            "SELECT name, source_schema::text, source_table::text, keys, history, track_columns, soft_delete \
             FROM medallion.silver_tables ORDER BY name",
            &[],
        )
        .await
        .map_err(Error::pg("read medallion.silver_tables"))?
        .into_iter()
        .map(|r| {
            let name: String = r.field(0)?;
            let history: String = r.field(4)?;
            Ok(SilverDef {
                expectations: rules.remove(&format!("silver.{name}")).unwrap_or_default(),
                publish: publish.remove(&format!("silver.{name}")),
                source: TableId {
                    schema: r.field(1)?,
                    table: r.field(2)?,
                },
                keys: r.field(3)?,
                history: if history == "scd2" {
                    History::Scd2
                } else {
                    History::Current
                },
                track_columns: r.field(5)?,
                soft_delete: r.field(6)?,
                name,
            })
        })
        .collect::<Result<_>>()?;
    let rows = client
        .query(
            "SELECT g.name, g.query, g.refresh, extract(epoch FROM g.refresh_interval)::float8, g.keys, \
                    coalesce((SELECT array_agg(d.upstream ORDER BY d.upstream) FROM medallion.dependencies d \
                              WHERE d.downstream = 'gold.' || g.name), '{}') \
             FROM medallion.gold_models g ORDER BY g.name",
            &[],
        )
        .await
        .map_err(Error::pg("read medallion.gold_models"))?;
    let mut gold: Vec<GoldDef> = rows
        .into_iter()
        .map(|r| {
            let name: String = r.field(0)?;
            let refresh: String = r.field(2)?;
            let secs: Option<f64> = r.field(3)?;
            Ok(GoldDef {
                expectations: rules.remove(&format!("gold.{name}")).unwrap_or_default(),
                publish: publish.remove(&format!("gold.{name}")),
                query: r.field(1)?,
                refresh: match (refresh.as_str(), secs) {
                    ("manual", _) => Refresh::Manual,
                    ("interval", Some(s)) => {
                        Refresh::Interval(std::time::Duration::from_secs_f64(s.max(1.0)))
                    }
                    _ => Refresh::OnChange,
                },
                keys: r.field(4)?,
                upstream: r.field(5)?,
                name,
            })
        })
        .collect::<Result<_>>()?;
    gold = dependency_order(gold);
    Ok((silver, gold))
}

/// Order gold models so that every model comes after the gold models it
/// reads (the extension refuses cycles; a leftover one is appended last).
fn dependency_order(mut models: Vec<GoldDef>) -> Vec<GoldDef> {
    let mut done: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(models.len());
    while !models.is_empty() {
        let ready: Vec<usize> = (0..models.len())
            .filter(|&i| {
                models[i].upstream.iter().all(|u| {
                    u.strip_prefix("gold.")
                        .is_none_or(|g| done.contains(g) || !models.iter().any(|m| m.name == g))
                })
            })
            .collect();
        if ready.is_empty() {
            out.append(&mut models);
            break;
        }
        for i in ready.into_iter().rev() {
            let m = models.remove(i);
            done.insert(m.name.clone());
            out.push(m);
        }
    }
    out
}

#[cfg(test)]
mod dag {
    use super::*;

    fn model(name: &str, upstream: &[&str]) -> GoldDef {
        GoldDef {
            name: name.into(),
            query: String::new(),
            refresh: Refresh::OnChange,
            keys: None,
            upstream: upstream.iter().map(|s| s.to_string()).collect(),
            expectations: vec![],
            publish: None,
        }
    }

    #[test]
    fn gold_models_run_after_what_they_read() {
        let order = dependency_order(vec![
            model("a", &["gold.b", "silver.x"]),
            model("b", &["gold.c"]),
            model("c", &["silver.x"]),
            model("d", &[]),
        ]);
        let names: Vec<_> = order.iter().map(|m| m.name.as_str()).collect();
        let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("c") < pos("b") && pos("b") < pos("a"), "{names:?}");
        assert_eq!(names.len(), 4);
    }
}
