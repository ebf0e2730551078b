//! Rewrites of a gold query's parsed AST (sqlparser) before DataFusion plans
//! it, where Postgres and DataFusion read the same text differently.
//!
//! | rewrite | Postgres text | planned as | why |
//! |---|---|---|---|
//! | [`numeric_cast`] | `x::numeric`, `CAST(x AS decimal)` | `numeric(38, S)` | DataFusion reads a bare `numeric` as `decimal(38, 10)`: a silver value with more decimals would be rounded; `S` is the lake's numeric scale, as silver stores unconstrained `numeric` |
//! | [`integer_cast`] | `x::int`, `CAST(x AS bigint)` | `pg_int4(x)`, `pg_int8(x)` | Postgres rounds numeric and floats to the nearest integer, DataFusion truncates (see `numeric`) |
//! | [`json_path_literal`] | `j #>> '{a,b}'` | `j #>> ARRAY['a', 'b']` | the JSON functions take a path as an array; the string gave NULL |
//! | [`set_returning_select_item`] | `SELECT generate_series(…)`, `SELECT jsonb_object_keys(j)` | `unnest(generate_series(…))`, `unnest(json_object_keys(j))` | a set-returning function in the select list returns rows in Postgres, one list per row in DataFusion |
//! | [`extract_numeric`] | `extract(year FROM d)` | `extract(year FROM d)::numeric(38, S)` | Postgres 14+ returns `numeric`, DataFusion an integer or float |
//! | [`json_cast`] | `x::jsonb`, `CAST(x AS json)` | `x::text` | silver keeps `json`/`jsonb` as Postgres' text, which the JSON operators read; the text is not re-normalised |
//! | [`like_any`] | `x LIKE ANY (ARRAY['a%', 'b%'])` | `(x LIKE 'a%' OR x LIKE 'b%')` | DataFusion does not implement `ANY` in `LIKE`/`ILIKE` |
//! | `jsonb_each` | `FROM t AS a, jsonb_each(a.j) AS d` | an unnest of the keys in `t`'s select list | see `super::jsonb_each` |
//! | [`refused_table_function`], [`refused_lateral`] | other `jsonb_each(j)`, `LATERAL (… LIMIT n)` | — | not supported: refused at planning with what to write instead |
//!
//! Each rewrite is a function over one node, so each has its own test.

use std::ops::ControlFlow;

use deltalake::datafusion::common::{DataFusionError, Result as DfResult};
use deltalake::datafusion::sql::sqlparser::ast::{
    Array, BinaryOperator, DataType, ExactNumberInfo, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArgumentList, FunctionArguments, Ident, ObjectName, Query, SelectItem, SetExpr,
    Statement, TableFactor, Value, ValueWithSpan, VisitMut, VisitorMut,
};

/// Apply every rewrite to `statement`; an error names a refused construct.
pub(super) fn apply(statement: &mut Statement, numeric_scale: i8) -> DfResult<()> {
    let mut v = Rewriter {
        numeric_scale,
        refused: None,
    };
    let _ = statement.visit(&mut v);
    match v.refused {
        Some(msg) => Err(DataFusionError::Plan(msg)),
        None => Ok(()),
    }
}

struct Rewriter {
    numeric_scale: i8,
    refused: Option<String>,
}

impl VisitorMut for Rewriter {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        super::jsonb_each::apply(query);
        set_returning_select_items(&mut query.body);
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        if let Some(msg) = refused_table_function(factor).or_else(|| refused_lateral(factor)) {
            self.refused.get_or_insert(msg);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        extract_numeric(expr, self.numeric_scale);
        numeric_cast(expr, self.numeric_scale);
        json_cast(expr);
        integer_cast(expr);
        like_any(expr);
        json_path_literal(expr);
        ControlFlow::Continue(())
    }
}

/// `x::numeric` (no precision) → `x::numeric(38, scale)`.
fn numeric_cast(expr: &mut Expr, scale: i8) {
    if let Expr::Cast { data_type, .. } = expr
        && matches!(
            data_type,
            DataType::Numeric(ExactNumberInfo::None) | DataType::Decimal(ExactNumberInfo::None)
        )
    {
        *data_type = DataType::Numeric(ExactNumberInfo::PrecisionAndScale(38, i64::from(scale)));
    }
}

/// `extract(f FROM x)` → `CAST(extract(f FROM x) AS numeric(38, scale))`:
/// Postgres 14+ gives extract's result as `numeric` (`2025`, `12.5`).
fn extract_numeric(expr: &mut Expr, scale: i8) {
    if matches!(expr, Expr::Extract { .. }) {
        let inner = std::mem::replace(expr, Expr::value(Value::Null));
        *expr = Expr::Cast {
            kind: deltalake::datafusion::sql::sqlparser::ast::CastKind::DoubleColon,
            expr: Box::new(inner),
            data_type: DataType::Numeric(ExactNumberInfo::PrecisionAndScale(38, i64::from(scale))),
            array: false,
            format: None,
        };
    }
}

/// `x::jsonb` / `x::json` → `x::text`: JSON is text in silver and gold.
fn json_cast(expr: &mut Expr) {
    if let Expr::Cast { data_type, .. } = expr
        && matches!(data_type, DataType::JSON | DataType::JSONB)
    {
        *data_type = DataType::Text;
    }
}

/// `x [NOT] LIKE ANY (ARRAY[p1, p2])` (and `ILIKE`) → `(x [NOT] LIKE p1 OR
/// x [NOT] LIKE p2)`: true when any pattern matches, as in Postgres. A
/// pattern list that is not an array literal is left for DataFusion.
fn like_any(expr: &mut Expr) {
    let case_insensitive = matches!(expr, Expr::ILike { .. });
    let (Expr::Like {
        negated,
        any: true,
        expr: subject,
        pattern,
        escape_char,
    }
    | Expr::ILike {
        negated,
        any: true,
        expr: subject,
        pattern,
        escape_char,
    }) = expr
    else {
        return;
    };
    let mut list = pattern.as_ref();
    while let Expr::Nested(inner) = list {
        list = inner;
    }
    let patterns = match list {
        Expr::Array(Array { elem, .. }) | Expr::Tuple(elem) => elem.clone(),
        _ => return,
    };
    let Some(first) = patterns.first() else {
        return;
    };
    let one = |p: &Expr| {
        let (negated, expr, pattern, escape_char) = (
            *negated,
            subject.clone(),
            Box::new(p.clone()),
            escape_char.clone(),
        );
        if case_insensitive {
            Expr::ILike {
                negated,
                any: false,
                expr,
                pattern,
                escape_char,
            }
        } else {
            Expr::Like {
                negated,
                any: false,
                expr,
                pattern,
                escape_char,
            }
        }
    };
    let mut any = one(first);
    for p in &patterns[1..] {
        any = Expr::BinaryOp {
            left: Box::new(any),
            op: BinaryOperator::Or,
            right: Box::new(one(p)),
        };
    }
    *expr = Expr::Nested(Box::new(any));
}

/// `x::int` → `pg_int4(x)` (and `smallint`/`bigint`): Postgres' rounding.
fn integer_cast(expr: &mut Expr) {
    let Expr::Cast {
        data_type,
        expr: inner,
        ..
    } = expr
    else {
        return;
    };
    let name = match data_type {
        DataType::SmallInt(None) | DataType::Int2(None) => "pg_int2",
        DataType::Int(None) | DataType::Integer(None) | DataType::Int4(None) => "pg_int4",
        DataType::BigInt(None) | DataType::Int8(None) => "pg_int8",
        _ => return,
    };
    let value = std::mem::replace(inner.as_mut(), Expr::value(Value::Null));
    *expr = call_of(name, vec![value]);
}

/// `j #> '{a,b}'` / `j #>> '{a,b}'` → `… ARRAY['a', 'b']`.
fn json_path_literal(expr: &mut Expr) {
    let Expr::BinaryOp { op, right, .. } = expr else {
        return;
    };
    if !matches!(
        op,
        BinaryOperator::HashArrow | BinaryOperator::HashLongArrow
    ) {
        return;
    }
    let Expr::Value(ValueWithSpan {
        value: Value::SingleQuotedString(text),
        ..
    }) = right.as_ref()
    else {
        return;
    };
    if let Some(path) = text_array(text) {
        **right = Expr::Array(Array {
            elem: path
                .into_iter()
                .map(|p| Expr::value(Value::SingleQuotedString(p)))
                .collect(),
            named: true,
        });
    }
}

/// The elements of a one-dimensional Postgres array literal (`{a,"b c"}`).
fn text_array(text: &str) -> Option<Vec<String>> {
    let inner = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut out = Vec::new();
    if inner.trim().is_empty() {
        return Some(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut item = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next()? {
                    '\\' => item.push(chars.next()?),
                    '"' => break,
                    c => item.push(c),
                }
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                if c == '{' || c == '"' {
                    return None;
                }
                item.push(c);
            }
            item = item.trim_end().to_string();
        }
        out.push(item);
        match chars.next() {
            None => return Some(out),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// Set-returning functions the select list expands (Postgres), by name,
/// with the DataFusion function that returns the same values as a list.
const SET_RETURNING: &[(&str, &str)] = &[
    ("generate_series", "generate_series"),
    ("jsonb_object_keys", "json_object_keys"),
    ("json_object_keys", "json_object_keys"),
];

fn set_returning_select_items(body: &mut SetExpr) {
    match body {
        SetExpr::Select(select) => {
            for item in &mut select.projection {
                if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item
                {
                    set_returning_select_item(e);
                }
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            set_returning_select_items(left);
            set_returning_select_items(right);
        }
        _ => {}
    }
}

/// A select item whose value is a set-returning call (under casts and
/// parentheses) → the call wrapped in `unnest(…)`.
fn set_returning_select_item(expr: &mut Expr) {
    match expr {
        Expr::Cast { expr, .. } | Expr::Nested(expr) => set_returning_select_item(expr),
        Expr::Function(f) if f.over.is_none() => {
            let name = f.name.to_string().to_ascii_lowercase();
            let Some((_, as_list)) = SET_RETURNING.iter().find(|(n, _)| *n == name) else {
                return;
            };
            f.name = ObjectName::from(vec![Ident::new(*as_list)]);
            let call = std::mem::replace(expr, Expr::value(Value::Null));
            *expr = call_of("unnest", vec![call]);
        }
        _ => {}
    }
}

fn call_of(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
                .collect(),
            clauses: Vec::new(),
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: Vec::new(),
    })
}

/// Table functions gold cannot run, with what to write instead.
const REFUSED_TABLE_FUNCTIONS: &[(&str, &str)] = &[
    (
        "jsonb_each",
        "jsonb_each is supported in gold only as FROM t AS a, jsonb_each(a.j) AS d (one table's column, an alias, d.key and d.value qualified): otherwise select jsonb_object_keys(j) AS k in a subquery and read the values with j -> k",
    ),
    (
        "jsonb_each_text",
        "jsonb_each_text is supported in gold only as FROM t AS a, jsonb_each_text(a.j) AS d (one table's column, an alias, d.key and d.value qualified): otherwise select jsonb_object_keys(j) AS k in a subquery and read the values with j ->> k",
    ),
    (
        "jsonb_object_keys",
        "jsonb_object_keys in FROM is not supported in gold: select unnest(json_object_keys(j)) in a subquery",
    ),
];

fn refused_table_function(factor: &TableFactor) -> Option<String> {
    let name = match factor {
        TableFactor::Table {
            name,
            args: Some(_),
            ..
        } => name,
        TableFactor::Function { name, .. } => name,
        _ => return None,
    };
    let name = name.to_string().to_ascii_lowercase();
    REFUSED_TABLE_FUNCTIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, msg)| msg.to_string())
}

/// A `LATERAL` subquery with `LIMIT`/`FETCH` (the "latest row per parent"
/// idiom): DataFusion cannot decorrelate it.
fn refused_lateral(factor: &TableFactor) -> Option<String> {
    match factor {
        TableFactor::Derived {
            lateral: true,
            subquery,
            ..
        } if subquery.limit_clause.is_some() || subquery.fetch.is_some() => Some(
            "LATERAL subqueries with LIMIT are not supported in gold: pick the rows with DISTINCT ON (parent key) … ORDER BY parent key, … or row_number() OVER (PARTITION BY parent key ORDER BY …) in a subquery, then join it".into(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::datafusion::sql::parser::{DFParser, Statement as DfStatement};
    use deltalake::datafusion::sql::sqlparser::dialect::PostgreSqlDialect;

    fn rewritten(sql: &str) -> DfResult<String> {
        let mut parsed = DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {})?;
        let Some(DfStatement::Statement(mut s)) = parsed.pop_front() else {
            panic!("not a statement: {sql}");
        };
        apply(&mut s, 24)?;
        Ok(s.to_string())
    }

    #[test]
    fn a_bare_numeric_cast_gets_the_lake_scale() {
        assert_eq!(
            rewritten("SELECT x::numeric, CAST(y AS decimal), z::numeric(10, 2) FROM t").unwrap(),
            "SELECT x::NUMERIC(38,24), CAST(y AS NUMERIC(38,24)), z::NUMERIC(10,2) FROM t"
        );
    }

    #[test]
    fn an_integer_cast_rounds_as_postgres() {
        assert_eq!(
            rewritten("SELECT x::int, CAST(y AS bigint), z::smallint, w::int4 FROM t").unwrap(),
            "SELECT pg_int4(x), pg_int8(y), pg_int2(z), pg_int4(w) FROM t"
        );
    }

    #[test]
    fn a_json_path_literal_becomes_an_array() {
        assert_eq!(
            rewritten(r#"SELECT j #>> '{a, "b c",1}', j #> '{}' FROM t"#).unwrap(),
            "SELECT j #>> ARRAY['a', 'b c', '1'], j #> ARRAY[] FROM t"
        );
        // Not an array literal: left for DataFusion to refuse or take.
        assert_eq!(
            rewritten("SELECT j #>> 'a' FROM t").unwrap(),
            "SELECT j #>> 'a' FROM t"
        );
        assert_eq!(text_array(r#"{"a\"b"}"#), Some(vec![r#"a"b"#.to_string()]));
        assert_eq!(text_array("{a,{b}}"), None);
    }

    #[test]
    fn a_set_returning_select_item_is_unnested() {
        assert_eq!(
            rewritten(
                "SELECT generate_series(DATE '2024-01-01', DATE '2024-03-01', INTERVAL '1 month')::date AS m \
                 UNION ALL SELECT jsonb_object_keys(j) FROM t"
            )
            .unwrap(),
            "SELECT unnest(generate_series(DATE '2024-01-01', DATE '2024-03-01', INTERVAL '1 month'))::DATE AS m \
             UNION ALL SELECT unnest(json_object_keys(j)) FROM t"
        );
        // In FROM it is a table function already; elsewhere in an
        // expression it is left alone.
        assert_eq!(
            rewritten("SELECT g FROM generate_series(1, 3) AS g").unwrap(),
            "SELECT g FROM generate_series(1, 3) AS g"
        );
    }

    #[test]
    fn extract_is_numeric() {
        assert_eq!(
            rewritten("SELECT extract(year FROM d), extract(month FROM d)::int FROM t").unwrap(),
            "SELECT EXTRACT(YEAR FROM d)::NUMERIC(38,24), pg_int4(EXTRACT(MONTH FROM d)::NUMERIC(38,24)) FROM t"
        );
    }

    #[test]
    fn a_json_cast_is_a_text_cast() {
        assert_eq!(
            rewritten("SELECT x::jsonb, CAST(y AS json), z::text FROM t").unwrap(),
            "SELECT x::TEXT, CAST(y AS TEXT), z::TEXT FROM t"
        );
    }

    #[test]
    fn like_any_is_a_disjunction() {
        assert_eq!(
            rewritten("SELECT a LIKE ANY (ARRAY['x%', 'y%']), b NOT ILIKE ANY (ARRAY['z']) FROM t")
                .unwrap(),
            "SELECT (a LIKE 'x%' OR a LIKE 'y%'), (b NOT ILIKE 'z') FROM t"
        );
        // Not a literal list: left as it is.
        assert_eq!(
            rewritten("SELECT a LIKE ANY (p) FROM t").unwrap(),
            "SELECT a LIKE ANY (p) FROM t"
        );
    }

    #[test]
    fn refused_constructs_say_what_to_write() {
        let e = rewritten(
            "SELECT p.id, o.name FROM p JOIN LATERAL (SELECT name FROM o WHERE o.p = p.id ORDER BY d DESC LIMIT 1) o ON true",
        )
        .unwrap_err();
        assert!(e.to_string().contains("DISTINCT ON"), "{e}");
        // A LATERAL subquery without LIMIT is left to the planner.
        rewritten("SELECT p.id, t.n FROM p CROSS JOIN LATERAL (SELECT count(*) AS n FROM o WHERE o.p = p.id) t")
            .unwrap();
        let e = rewritten("SELECT key FROM t, u, jsonb_each(t.j || u.j)").unwrap_err();
        assert!(e.to_string().contains("jsonb_object_keys"), "{e}");
    }
}
