//! Silver and gold compared with Postgres itself: a silver table with its
//! source row for row (and each column's Arrow type), a gold model with its
//! SQL run by Postgres over the source tables (types, count, rows), a
//! published model with the same.

use std::collections::{HashMap, HashSet};

use medallion::refine;
use medallion::{Config, Lsn};

use super::Env;
use crate::lake;

/// Normalise a value so DataFusion's and Postgres's text forms compare:
/// numbers to 6 decimals, timestamps without `T`/zone suffix, booleans as t/f.
pub fn norm(v: Option<&str>) -> String {
    let Some(v) = v else {
        return "NULL".into();
    };
    if let Ok(f) = v.parse::<f64>() {
        let s = format!("{:.6}", f);
        return if s == "-0.000000" {
            "0.000000".into()
        } else {
            s
        };
    }
    match v {
        "true" => return "t".into(),
        "false" => return "f".into(),
        _ => {}
    }
    let mut s = v.replacen('T', " ", 1);
    if s.len() >= 19 && s.as_bytes().get(4) == Some(&b'-') && s.as_bytes().get(13) == Some(&b':') {
        for suffix in ["Z", "+00:00", "+00"] {
            if let Some(x) = s.strip_suffix(suffix) {
                s = x.to_string();
            }
        }
        if let Some(x) = s.strip_suffix(".000000") {
            s = x.to_string();
        }
        return s;
    }
    v.to_string()
}

impl Env {
    pub async fn refine_cycle(&self, cfg: &Config, w: Lsn) -> refine::CycleReport {
        let (mut client, conn) = tokio_postgres::connect(&cfg.database_url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        refine::cycle(cfg, &mut client, w, &HashSet::new())
            .await
            .expect("refinement cycle")
    }

    /// Catch up bronze, then one refinement cycle at the caught-up position.
    pub async fn catch_up_and_refine(&self) -> refine::CycleReport {
        let cfg = self.cfg();
        let s = self.catch_up_with(&cfg).await;
        let r = self.refine_cycle(&cfg, s.acked_lsn).await;
        assert_eq!(r.watermark, s.acked_lsn);
        r
    }

    pub async fn source_columns(&self, schema: &str, table: &str) -> Vec<(String, String)> {
        self.client()
            .await
            .query(
                "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
                 WHERE attrelid = format('%I.%I', $1::text, $2::text)::regclass AND attnum > 0 \
                   AND NOT attisdropped ORDER BY attnum",
                &[&schema, &table],
            )
            .await
            .expect("columns")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    pub async fn refined_batches(
        &self,
        layer: &str,
        name: &str,
    ) -> Vec<arrow::record_batch::RecordBatch> {
        let url = self
            .lake_root()
            .join(&format!("{layer}/{name}/"))
            .expect("refined table URL");
        lake::read_table_url(&url, &self.storage())
            .await
            .unwrap_or_else(|e| panic!("read {layer}.{name}: {e}"))
    }

    pub async fn refined_rows(
        &self,
        layer: &str,
        name: &str,
    ) -> Vec<HashMap<String, Option<String>>> {
        lake::rows_as_text(&self.refined_batches(layer, name).await)
    }

    /// A current-state silver table equals its source, row for row, and
    /// each column has the Arrow type the type map gives its Postgres type
    /// (timestamptz stays UTC-adjusted, numeric a decimal of its scale, text
    /// text): a text rendering alone would hide a lossy type.
    pub async fn assert_silver_matches(&self, schema: &str, table: &str, silver: &str) {
        let client = self.client().await;
        let cols = self.source_columns(schema, table).await;
        let batches = self.refined_batches("silver", silver).await;
        let types = client
            .query(
                "SELECT attname::text, atttypid::int8, atttypmod FROM pg_attribute \
                 WHERE attrelid = format('%I.%I', $1::text, $2::text)::regclass AND attnum > 0 \
                   AND NOT attisdropped ORDER BY attnum",
                &[&schema, &table],
            )
            .await
            .expect("column types");
        if let Some(b) = batches.first() {
            let numeric_scale = self.cfg().numeric_scale;
            for r in &types {
                let (name, oid, typmod): (String, i64, i32) = (r.get(0), r.get(1), r.get(2));
                let expected = medallion::typemap::map_type(oid as u32, typmod, numeric_scale)
                    .kind
                    .arrow_type();
                let field = b
                    .schema()
                    .field_with_name(&name)
                    .unwrap_or_else(|_| panic!("silver.{silver} has no column {name}"))
                    .clone();
                assert_eq!(
                    stored(field.data_type()),
                    expected,
                    "silver.{silver}.{name}: Arrow type"
                );
            }
        }
        let rows = lake::rows_as_text(&batches);
        self.assert_rows_equal_source(
            &client,
            schema,
            table,
            &cols,
            rows.iter(),
            &format!("silver.{silver}"),
        )
        .await;
    }

    /// A published gold model (`medallion_gold.<model>`) equals the model's
    /// SQL run by Postgres on the source, row for row, both ways.
    pub async fn assert_published_matches(&self, model: &str) {
        self.assert_gold_matches(model).await; // also creates the silver.* oracle views
        let query = self.sql(&format!(
            "SELECT query FROM medallion.gold_models WHERE name = '{model}'"
        ));
        let published = format!("SELECT * FROM medallion_gold.\"{model}\"");
        let n = self.sql(&format!("SELECT count(*) FROM ({published}) p"));
        assert!(
            n.trim().parse::<i64>().unwrap() > 0,
            "medallion_gold.{model} is empty: the comparison would prove nothing"
        );
        for (a, b, what) in [
            (&query, &published, "missing from"),
            (&published, &query, "extra in"),
        ] {
            let diff = self.sql(&format!(
                "SET TimeZone = 'UTC'; SELECT count(*) FROM (({a}) EXCEPT ALL ({b})) d"
            ));
            assert_eq!(
                diff.trim().lines().last().unwrap_or_default(),
                "0",
                "rows {what} medallion_gold.{model} (compared with Postgres running its SQL)"
            );
        }
    }

    /// A gold model equals its SQL executed by Postgres on the source
    /// (`silver.<t>` as views over the source tables).
    pub async fn assert_gold_matches(&self, model: &str) {
        if let Err(e) = self.gold_differences(model).await {
            panic!("{e}");
        }
    }

    /// `gold.<m>` as views running every gold model's SQL in Postgres (over
    /// the `silver.*` oracle views), created in dependency order: a model
    /// that reads other models is compared with Postgres running the whole
    /// chain over the source tables.
    pub async fn gold_oracle_views(&self, client: &tokio_postgres::Client) {
        let models: Vec<(String, String)> = client
            .query(
                "SELECT name, query FROM medallion.gold_models ORDER BY name",
                &[],
            )
            .await
            .expect("gold models")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        client
            .batch_execute("DROP SCHEMA IF EXISTS gold CASCADE; CREATE SCHEMA gold")
            .await
            .expect("oracle gold schema");
        let mut pending = models;
        loop {
            let before = pending.len();
            let mut next = Vec::new();
            for (name, query) in pending {
                let ddl = format!("CREATE VIEW gold.\"{name}\" AS {query}");
                if client.batch_execute(&ddl).await.is_err() {
                    next.push((name, query));
                }
            }
            pending = next;
            if pending.is_empty() || pending.len() == before {
                break;
            }
        }
    }

    /// What differs between a gold model and Postgres running its SQL over
    /// the source tables: column types, row count, rows. `Err` names it.
    pub async fn gold_differences(&self, model: &str) -> Result<(), String> {
        let client = self.client().await;
        let query: String = client
            .query_one(
                "SELECT query FROM medallion.gold_models WHERE name = $1",
                &[&model],
            )
            .await
            .expect("gold query")
            .get(0);
        let silvers = client
            .query(
                "SELECT name, source_schema::text, source_table::text FROM medallion.silver_tables",
                &[],
            )
            .await
            .expect("silver tables");
        let mut ddl = String::from("SET TimeZone = 'UTC'; CREATE SCHEMA IF NOT EXISTS silver;");
        for s in &silvers {
            let (n, sc, t): (String, String, String) = (s.get(0), s.get(1), s.get(2));
            ddl.push_str(&format!(
                "CREATE OR REPLACE VIEW silver.\"{n}\" AS SELECT * FROM \"{sc}\".\"{t}\";"
            ));
        }
        client.batch_execute(&ddl).await.expect("oracle views");
        if query.contains("gold.") {
            self.gold_oracle_views(&client).await;
        }
        let mut expected: Vec<Vec<Option<String>>> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for m in client.simple_query(&query).await.expect("oracle query") {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                if names.is_empty() {
                    names = r.columns().iter().map(|c| c.name().to_string()).collect();
                }
                expected.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
            }
        }
        let batches = self.refined_batches("gold", model).await;
        // Each column's Arrow type is the one Postgres gives the same SQL.
        let described = client.prepare(&query).await.expect("describe oracle query");
        if let Some(b) = batches.first() {
            for c in described.columns() {
                let Ok(field) = b.schema().field_with_name(c.name()).cloned() else {
                    return Err(format!("gold.{model} has no column {}", c.name()));
                };
                if !same_type(c.type_(), field.data_type()) {
                    return Err(format!(
                        "gold.{model}.{}: Postgres gives {}, gold holds {}",
                        c.name(),
                        c.type_(),
                        field.data_type()
                    ));
                }
            }
        }
        let types: Vec<tokio_postgres::types::Type> = described
            .columns()
            .iter()
            .map(|c| c.type_().clone())
            .collect();
        let rows = lake::rows_as_text(&batches);
        let mut actual: Vec<Vec<Option<String>>> = rows
            .iter()
            .map(|r| names.iter().map(|n| r.get(n).cloned().flatten()).collect())
            .collect();
        // Rows are paired in the order of their coarse text (numbers to 6
        // decimals), then compared cell by cell exactly (`same_value`).
        let coarse = |row: &Vec<Option<String>>| {
            row.iter()
                .map(|v| norm(v.as_deref()))
                .collect::<Vec<_>>()
                .join("|")
        };
        expected.sort_by_cached_key(coarse);
        actual.sort_by_cached_key(coarse);
        if expected.is_empty() {
            return Err(format!(
                "gold.{model}: the oracle query returned no rows; the test would prove nothing"
            ));
        }
        if actual.len() != expected.len() {
            return Err(format!(
                "gold.{model}: {} rows, Postgres gives {}",
                actual.len(),
                expected.len()
            ));
        }
        let diff: Vec<_> = actual
            .iter()
            .zip(&expected)
            .filter(|(a, e)| {
                a.iter()
                    .zip(e.iter())
                    .zip(&types)
                    .any(|((a, e), t)| !same_value(t, a.as_deref(), e.as_deref()))
            })
            .map(|(a, e)| (coarse(a), coarse(e)))
            .take(5)
            .collect();
        if diff.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "gold.{model} differs from Postgres (gold, postgres): {diff:#?}"
            ))
        }
    }
}

/// Whether gold's value equals Postgres' for a column of Postgres type
/// `t`. A `numeric` is compared exactly at the scale Postgres printed:
/// gold's value rounded half away from zero to Postgres' decimals (gold's
/// `1.2345` equals Postgres' `1.235`, never `1.24`; gold's `1.2` does not
/// equal Postgres' `1.2345`: fewer digits than Postgres is a loss); integers, text, dates and
/// timestamps compare as text (normalised by `norm`); floating point to 6
/// decimals.
pub fn same_value(t: &tokio_postgres::types::Type, gold: Option<&str>, pg: Option<&str>) -> bool {
    match (gold, pg) {
        (None, None) => true,
        (Some(g), Some(p)) if *t == tokio_postgres::types::Type::NUMERIC => {
            match (Decimal::parse(g), Decimal::parse(p)) {
                (Some(g), Some(p)) => g.rounded(p.frac.len()) == p.rounded(p.frac.len()),
                _ => g == p,
            }
        }
        (g, p) => norm(g) == norm(p),
    }
}

/// A decimal number as printed by Postgres or Arrow (no exponent), digits
/// kept exactly.
#[derive(Debug, PartialEq)]
struct Decimal {
    negative: bool,
    int: String,
    frac: String,
}

impl Decimal {
    pub fn parse(s: &str) -> Option<Decimal> {
        let s = s.trim();
        let (negative, s) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        if int.is_empty() && frac.is_empty()
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(Decimal {
            negative,
            int: int.to_string(),
            frac: frac.to_string(),
        })
    }

    /// Rounded half away from zero to `scale` decimals, in a canonical form.
    pub fn rounded(&self, scale: usize) -> Decimal {
        let mut digits: Vec<u8> = self.int.bytes().collect();
        let frac = self.frac.as_bytes();
        digits.extend((0..scale).map(|i| frac.get(i).copied().unwrap_or(b'0')));
        if frac.get(scale).is_some_and(|d| *d >= b'5') {
            let mut i = digits.len();
            loop {
                if i == 0 {
                    digits.insert(0, b'1');
                    break;
                }
                i -= 1;
                if digits[i] == b'9' {
                    digits[i] = b'0';
                } else {
                    digits[i] += 1;
                    break;
                }
            }
        }
        let split = digits.len() - scale;
        let int = String::from_utf8_lossy(&digits[..split])
            .trim_start_matches('0')
            .to_string();
        let frac = String::from_utf8_lossy(&digits[split..]).to_string();
        let zero = int.is_empty() && frac.bytes().all(|b| b == b'0');
        Decimal {
            negative: self.negative && !zero,
            int: if int.is_empty() { "0".into() } else { int },
            frac,
        }
    }
}

#[test]
pub fn decimals_compare_at_the_scale_postgres_printed() {
    let same =
        |g: &str, p: &str| same_value(&tokio_postgres::types::Type::NUMERIC, Some(g), Some(p));
    assert!(same("1.234500000000000000000000", "1.2345"));
    assert!(same("1.5", "1.500"));
    assert!(!same("1.2", "1.2345"));
    assert!(same("1.234500000000000000000000", "1.235"));
    assert!(!same("1.234400000000000000000000", "1.235"));
    assert!(!same("1.234500000000000000000000", "1.24"));
    assert!(same("-0.000000000000000000000001", "0.00"));
    assert!(same("99.995", "100.00"));
    assert!(same("12345678901234567890.5", "12345678901234567891"));
    assert!(!same("12345678901234567890.1", "12345678901234567891"));
    assert!(!same("2.000000000000000000000000", "-2.00"));
}

/// The Delta storage type of what a reader returned: readers may hand
/// strings and binaries back as view or large types; Delta stores one
/// `string` / `binary`.
pub fn stored(dt: &arrow::datatypes::DataType) -> arrow::datatypes::DataType {
    use arrow::datatypes::{DataType as D, Field};
    match dt {
        D::Utf8View | D::LargeUtf8 => D::Utf8,
        D::BinaryView | D::LargeBinary => D::Binary,
        D::List(f) | D::LargeList(f) | D::ListView(f) => D::List(std::sync::Arc::new(Field::new(
            "element",
            stored(f.data_type()),
            true,
        ))),
        other => other.clone(),
    }
}

/// Whether an Arrow type holds a Postgres type without loss of kind.
pub fn same_type(pg: &tokio_postgres::types::Type, dt: &arrow::datatypes::DataType) -> bool {
    use arrow::datatypes::{DataType as D, TimeUnit};
    use tokio_postgres::types::Type as T;
    match *pg {
        T::BOOL => dt == &D::Boolean,
        T::INT2 => dt == &D::Int16,
        T::INT4 => dt == &D::Int32,
        T::INT8 => dt == &D::Int64,
        T::FLOAT4 => dt == &D::Float32,
        T::FLOAT8 => dt == &D::Float64,
        T::NUMERIC => matches!(dt, D::Decimal128(..)),
        T::JSON | T::JSONB => matches!(dt, D::Utf8 | D::LargeUtf8 | D::Utf8View),
        T::TEXT_ARRAY | T::VARCHAR_ARRAY => {
            matches!(dt, D::List(f) if matches!(f.data_type(), D::Utf8 | D::LargeUtf8 | D::Utf8View))
        }
        T::TEXT | T::VARCHAR | T::BPCHAR | T::NAME => {
            matches!(dt, D::Utf8 | D::LargeUtf8 | D::Utf8View)
        }
        T::DATE => dt == &D::Date32,
        T::TIMESTAMP => matches!(dt, D::Timestamp(TimeUnit::Microsecond, None)),
        T::TIMESTAMPTZ => matches!(dt, D::Timestamp(TimeUnit::Microsecond, Some(_))),
        _ => true,
    }
}
