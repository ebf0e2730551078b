//! Gold models: SQL over silver and gold tables, parsed at definition time.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use pgrx::prelude::*;
use sqlparser::ast::{ObjectNamePart, Query, SetExpr, Statement, TableFactor, Visit, Visitor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::{catalog, names, predicate, raise};

/// A reference from a gold query to a medallion table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TableRef {
    pub layer: String,
    pub name: String,
}

/// Why a gold query was refused.
#[derive(Debug, PartialEq)]
pub(crate) enum QueryError {
    Syntax(String),
    NotASelect(String),
    Unqualified(String),
    WrongLayer(String),
}

#[derive(Default)]
struct Refs {
    ctes: BTreeSet<String>,
    relations: Vec<Vec<String>>,
    /// The next relation name is a table function's (`FROM
    /// generate_series(…) AS g`): it reads no table.
    function_name_next: bool,
}

impl Visitor for Refs {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.ctes.insert(cte.alias.name.value.to_lowercase());
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        self.function_name_next = matches!(factor, TableFactor::Table { args: Some(_), .. });
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &sqlparser::ast::ObjectName) -> ControlFlow<()> {
        if std::mem::take(&mut self.function_name_next) {
            return ControlFlow::Continue(());
        }
        let parts = relation
            .0
            .iter()
            .map(|p| match p {
                ObjectNamePart::Identifier(i) => i.value.to_lowercase(),
                ObjectNamePart::Function(f) => f.name.value.to_lowercase(),
            })
            .collect();
        self.relations.push(parts);
        ControlFlow::Continue(())
    }
}

/// Parse a gold query: one read-only query; every relation it reads must be
/// `silver.<name>` or `gold.<name>` (CTE names excepted).
pub(crate) fn parse_gold_query(sql: &str) -> Result<Vec<TableRef>, QueryError> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|e| QueryError::Syntax(predicate::parser_message(e)))?;
    let query = match statements.as_slice() {
        [Statement::Query(query)] => query,
        [other] => {
            let text = other.to_string();
            let verb = text.split_whitespace().next().unwrap_or("?").to_uppercase();
            return Err(QueryError::NotASelect(format!(
                "expected a SELECT, found a {verb} statement"
            )));
        }
        many => {
            return Err(QueryError::NotASelect(format!(
                "expected exactly one SELECT statement, found {}",
                many.len()
            )));
        }
    };
    if !matches!(
        query.body.as_ref(),
        SetExpr::Select(_) | SetExpr::SetOperation { .. } | SetExpr::Query(_) | SetExpr::Values(_)
    ) {
        return Err(QueryError::NotASelect(
            "a gold model is a read-only query (SELECT, WITH … SELECT, UNION …)".into(),
        ));
    }
    let mut refs = Refs::default();
    let _ = statements.visit(&mut refs);
    let mut out = BTreeSet::new();
    for parts in refs.relations {
        match parts.as_slice() {
            [one] if refs.ctes.contains(one) => {}
            [one] => return Err(QueryError::Unqualified(one.clone())),
            [layer, name] if layer == "silver" || layer == "gold" => {
                out.insert(TableRef {
                    layer: layer.clone(),
                    name: name.clone(),
                });
            }
            other => return Err(QueryError::WrongLayer(other.join("."))),
        }
    }
    Ok(out.into_iter().collect())
}

/// Parse a refresh policy: `on_change`, `manual` or an interval such as
/// `15 minutes`. Returns (policy, interval text).
pub(crate) fn parse_refresh(refresh: &str) -> Option<(&'static str, Option<String>)> {
    let r = refresh.trim().to_lowercase();
    match r.as_str() {
        "on_change" => return Some(("on_change", None)),
        "manual" => return Some(("manual", None)),
        _ => {}
    }
    let digits: String = r.chars().take_while(|c| c.is_ascii_digit()).collect();
    let n: u64 = digits.parse().ok()?;
    let unit = r[digits.len()..].trim();
    let unit = match unit {
        "s" | "sec" | "secs" | "second" | "seconds" => "seconds",
        "m" | "min" | "mins" | "minute" | "minutes" => "minutes",
        "h" | "hour" | "hours" => "hours",
        "d" | "day" | "days" => "days",
        _ => return None,
    };
    if n == 0 {
        return None;
    }
    Some(("interval", Some(format!("{n} {unit}"))))
}

fn silver_exists(name: &str) -> bool {
    catalog::one(
        "SELECT EXISTS (SELECT 1 FROM medallion.silver_tables WHERE name = $1)",
        &[name.into()],
    )
    .unwrap_or(false)
}

/// Define (or redefine) a gold model.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn define_gold(
    name: &str,
    query: &str,
    refresh: default!(String, "'on_change'"),
    keys: default!(Option<Vec<String>>, "NULL"),
) {
    names::check("gold model name", name);
    if silver_exists(name) {
        raise::error(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("a silver table named \"{name}\" already exists"),
            "Silver and gold names share one namespace; choose another name for the gold model.",
        );
    }
    let Some((policy, interval)) = parse_refresh(&refresh) else {
        raise::error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid refresh \"{refresh}\""),
            "refresh is 'on_change', 'manual', or an interval such as '15 minutes' or '1 hour'.",
        );
    };
    if let Some(k) = &keys
        && k.is_empty()
    {
        raise::error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "keys must name at least one column",
            "Pass NULL for a full recompute on every refresh.",
        );
    }
    let refs = match parse_gold_query(query) {
        Ok(r) => r,
        Err(QueryError::Syntax(m)) => raise::error(
            PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            format!("syntax error in gold model \"{name}\": {m}"),
            "Gold queries use PostgreSQL syntax restricted to what DataFusion runs: SELECT with joins, aggregates, window functions and CTEs.",
        ),
        Err(QueryError::NotASelect(m)) => raise::error(
            PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            format!("gold model \"{name}\" is not a query: {m}"),
            "A gold model is a single SELECT over silver.<name> and gold.<name> tables.",
        ),
        Err(QueryError::Unqualified(t)) => raise::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("gold model \"{name}\" reads \"{t}\", which is not a silver or gold table"),
            format!("Qualify it with its layer: silver.{t} or gold.{t}."),
        ),
        Err(QueryError::WrongLayer(t)) => raise::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("gold model \"{name}\" reads \"{t}\", which is not a silver or gold table"),
            "Gold models read only silver.<name> and gold.<name>; add a source and a silver table for Postgres tables.",
        ),
    };
    for r in &refs {
        let exists = match r.layer.as_str() {
            "silver" => silver_exists(&r.name),
            _ => catalog::gold_exists(&r.name),
        };
        if r.layer == "gold" && r.name == name {
            raise::error(
                PgSqlErrorCode::ERRCODE_INVALID_OBJECT_DEFINITION,
                format!("gold model \"{name}\" reads itself"),
                "A gold model cannot depend on itself.",
            );
        }
        if !exists {
            raise::error(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("{}.{} does not exist", r.layer, r.name),
                format!(
                    "Define it first with medallion.define_{}(...), or check SELECT name FROM medallion.pipeline.",
                    r.layer
                ),
            );
        }
        if r.layer == "gold" {
            // Cycle: does `r` (transitively) read `name`?
            let up = catalog::texts(
                "WITH RECURSIVE u(n, depth) AS (SELECT $1::text, 0 UNION \
                 SELECT d.upstream, u.depth + 1 FROM medallion.dependencies d JOIN u ON d.downstream = u.n WHERE u.depth < 100) \
                 SELECT n FROM u",
                &[format!("gold.{}", r.name).into()],
            );
            if up.iter().any(|n| n == &format!("gold.{name}")) {
                raise::error_detail(
                    PgSqlErrorCode::ERRCODE_INVALID_OBJECT_DEFINITION,
                    format!("gold model \"{name}\" would create a dependency cycle"),
                    format!("gold.{} already depends on gold.{name}", r.name),
                    "Gold models form a DAG; restructure the models so that no model reads its own output.",
                );
            }
        }
    }
    let changed: bool = catalog::one(
        "INSERT INTO medallion.gold_models (name, query, refresh, refresh_interval, keys) \
         VALUES ($1, $2, $3, $4::interval, $5) \
         ON CONFLICT (name) DO UPDATE SET query = EXCLUDED.query, refresh = EXCLUDED.refresh, \
            refresh_interval = EXCLUDED.refresh_interval, keys = EXCLUDED.keys, updated_at = now() \
         WHERE (gold_models.query, gold_models.refresh, gold_models.refresh_interval, gold_models.keys) \
            IS DISTINCT FROM (EXCLUDED.query, EXCLUDED.refresh, EXCLUDED.refresh_interval, EXCLUDED.keys) \
         RETURNING true",
        &[
            name.into(),
            query.into(),
            policy.into(),
            interval.into(),
            keys.into(),
        ],
    )
    .unwrap_or(false);
    let node = format!("gold.{name}");
    catalog::exec(
        "DELETE FROM medallion.dependencies WHERE downstream = $1",
        &[node.clone().into()],
    );
    for r in &refs {
        catalog::exec(
            "INSERT INTO medallion.dependencies (downstream, upstream) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[
                node.clone().into(),
                format!("{}.{}", r.layer, r.name).into(),
            ],
        );
    }
    if changed {
        catalog::notify_config("gold");
    }
}

/// Drop a gold model (and, with `cascade`, the models that read it).
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn drop_gold(name: &str, cascade: default!(bool, false)) {
    if !catalog::gold_exists(name) {
        raise::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("gold model \"{name}\" does not exist"),
            "See SELECT name FROM medallion.pipeline WHERE layer = 'gold';",
        );
    }
    catalog::drop_with_dependents(
        &format!("gold.{name}"),
        cascade,
        &format!("gold model {name}"),
    );
    catalog::notify_config("drop gold");
}

/// Ask the sidecar to refresh a gold model (or rerun a silver merge) now.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn refresh(name: &str) {
    let layer = if catalog::gold_exists(name) {
        "gold"
    } else if silver_exists(name) {
        "silver"
    } else {
        raise::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("\"{name}\" is not a silver table or gold model"),
            "See SELECT layer, name FROM medallion.pipeline;",
        );
    };
    catalog::exec(
        "SELECT pg_catalog.pg_notify('medallion_refresh', $1)",
        &[format!("{layer}.{name}").into()],
    );
}

/// The `silver.<name>` / `gold.<name>` node a user names (bare names are
/// looked up: silver and gold share one namespace).
fn node_of(name: &str) -> String {
    let (layer, bare) = match name.split_once('.') {
        Some((l, n)) if l == "silver" || l == "gold" => (Some(l), n),
        _ => (None, name),
    };
    let is_gold = catalog::gold_exists(bare);
    let is_silver = silver_exists(bare);
    match (layer, is_silver, is_gold) {
        (Some("silver"), true, _) | (None, true, _) => format!("silver.{bare}"),
        (Some("gold"), _, true) | (None, _, true) => format!("gold.{bare}"),
        _ => raise::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("\"{name}\" is not a silver table or gold model"),
            "See SELECT layer, name FROM medallion.pipeline;",
        ),
    }
}

/// Copy a silver table or gold model into Postgres after each refresh,
/// replacing the previous contents atomically (readers see the old or the
/// new rows, never a mix). `keys`: the columns that identify a published
/// row (a unique index on them; later refreshes copy only the rows that
/// changed); by default the model's `keys` or the table's primary key.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn publish(
    name: &str,
    target_schema: default!(String, "'medallion_gold'"),
    target_table: default!(Option<String>, "NULL"),
    keys: default!(Option<Vec<String>>, "NULL"),
) {
    let node = node_of(name);
    let table = target_table.unwrap_or_else(|| {
        node.split_once('.')
            .map(|(_, n)| n.to_string())
            .unwrap_or_default()
    });
    names::check("target schema", &target_schema);
    names::check("target table", &table);
    if keys.as_ref().is_some_and(|k| k.is_empty()) {
        raise::error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "keys must name at least one column",
            "Pass NULL to use the model's keys or the table's primary key.",
        );
    }
    if matches!(
        target_schema.as_str(),
        "medallion" | "pg_catalog" | "information_schema" | "public"
    ) {
        raise::error(
            PgSqlErrorCode::ERRCODE_INVALID_SCHEMA_NAME,
            format!("cannot publish into schema \"{target_schema}\""),
            "Publish into a schema of its own (the default is medallion_gold): the sidecar replaces the table's contents on every refresh.",
        );
    }
    // Only into what the pipeline owns: the sidecar replaces the table's
    // rows with its own privileges on every refresh.
    let schema_owner: Option<(bool, String)> = Spi::get_two_with_args::<bool, String>(
        "SELECT pg_catalog.pg_has_role(n.nspowner, 'medallion_admin', 'MEMBER'), \
                pg_catalog.pg_get_userbyid(n.nspowner)::text \
         FROM pg_catalog.pg_namespace n WHERE n.nspname = $1",
        &[target_schema.clone().into()],
    )
    .ok()
    .and_then(|(a, b)| Some((a?, b?)));
    if let Some((false, owner)) = schema_owner {
        raise::error(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "cannot publish into schema \"{target_schema}\": it is owned by role \"{owner}\", who is not a pipeline role"
            ),
            "Publish into a schema the sidecar creates and owns (the default medallion_gold, or a new name); a schema owned by another role could hold its triggers and rules.",
        );
    }
    let foreign: bool = catalog::one(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
            WHERE n.nspname = $1 AND c.relname = $2 \
              AND NOT COALESCE(pg_catalog.starts_with(pg_catalog.obj_description(c.oid, 'pg_class'), 'medallion: '), false) \
              AND NOT EXISTS (SELECT 1 FROM medallion.publications p WHERE p.target_schema = $1 AND p.target_table = $2))",
        &[target_schema.clone().into(), table.clone().into()],
    )
    .unwrap_or(true);
    if foreign {
        raise::error(
            PgSqlErrorCode::ERRCODE_DUPLICATE_TABLE,
            format!("{target_schema}.{table} exists and is not a medallion publication"),
            "Pass another target_table (or target_schema): the sidecar would replace that table's rows.",
        );
    }
    let taken: Option<String> = catalog::one(
        "SELECT node FROM medallion.publications WHERE target_schema = $1 AND target_table = $2 AND node <> $3",
        &[
            target_schema.clone().into(),
            table.clone().into(),
            node.clone().into(),
        ],
    );
    if let Some(other) = taken {
        raise::error(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("{target_schema}.{table} is already the publication of {other}"),
            "Pass another target_table.",
        );
    }
    catalog::exec(
        "INSERT INTO medallion.publications (node, target_schema, target_table, keys) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (node) DO UPDATE SET target_schema = EXCLUDED.target_schema, \
            target_table = EXCLUDED.target_table, keys = EXCLUDED.keys, updated_at = now()",
        &[node.into(), target_schema.into(), table.into(), keys.into()],
    );
    catalog::notify_config("publish");
}

/// Stop publishing a table (the Postgres copy stays until you drop it).
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn unpublish(name: &str) {
    let node = node_of(name);
    let deleted: bool = catalog::one(
        "WITH d AS (DELETE FROM medallion.publications WHERE node = $1 RETURNING 1) SELECT count(*) > 0 FROM d",
        &[node.clone().into()],
    )
    .unwrap_or(false);
    if !deleted {
        raise::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("{node} is not published"),
            "See SELECT * FROM medallion.publications;",
        );
    }
    catalog::notify_config("unpublish");
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn gold_references() {
        let refs = parse_gold_query(
            "WITH m AS (SELECT * FROM silver.account_move) \
             SELECT p.name, sum(m.amount_total) FROM m JOIN silver.res_partner p ON p.id = m.partner_id \
             JOIN gold.x ON true GROUP BY 1",
        )
        .unwrap();
        assert_eq!(
            refs,
            vec![
                TableRef {
                    layer: "gold".into(),
                    name: "x".into()
                },
                TableRef {
                    layer: "silver".into(),
                    name: "account_move".into()
                },
                TableRef {
                    layer: "silver".into(),
                    name: "res_partner".into()
                },
            ]
        );
    }

    #[test]
    fn table_functions_read_no_table() {
        // A set-returning function in FROM is a function call, not a
        // relation; the tables joined to it are still found and checked.
        assert_eq!(
            parse_gold_query(
                "SELECT g, l.id FROM generate_series(1, 3) AS g, silver.sale_order_line l, \
                 jsonb_each(l.analytic_distribution) AS d, unnest(ARRAY['a']) AS s(state)"
            )
            .unwrap(),
            vec![TableRef {
                layer: "silver".into(),
                name: "sale_order_line".into()
            }]
        );
        assert_eq!(
            parse_gold_query("SELECT * FROM generate_series(1, 3) AS g, res_partner"),
            Err(QueryError::Unqualified("res_partner".into()))
        );
    }

    #[test]
    fn gold_rejections() {
        assert!(matches!(
            parse_gold_query("SELEC 1"),
            Err(QueryError::Syntax(_))
        ));
        assert!(matches!(
            parse_gold_query("DELETE FROM silver.x"),
            Err(QueryError::NotASelect(_))
        ));
        assert!(matches!(
            parse_gold_query("SELECT 1; SELECT 2"),
            Err(QueryError::NotASelect(_))
        ));
        assert_eq!(
            parse_gold_query("SELECT * FROM res_partner"),
            Err(QueryError::Unqualified("res_partner".into()))
        );
        assert_eq!(
            parse_gold_query("SELECT * FROM public.res_partner"),
            Err(QueryError::WrongLayer("public.res_partner".into()))
        );
    }

    #[test]
    fn refresh_policies() {
        assert_eq!(parse_refresh("on_change"), Some(("on_change", None)));
        assert_eq!(parse_refresh("manual"), Some(("manual", None)));
        assert_eq!(
            parse_refresh("15 minutes"),
            Some(("interval", Some("15 minutes".into())))
        );
        assert_eq!(
            parse_refresh("1h"),
            Some(("interval", Some("1 hours".into())))
        );
        assert_eq!(parse_refresh("0 minutes"), None);
        assert_eq!(parse_refresh("often"), None);
    }
}
