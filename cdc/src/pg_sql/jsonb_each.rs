//! `FROM t AS a, jsonb_each(a.j) AS d` without a lateral table function.
//!
//! Postgres expands a jsonb object into one row per key with
//! `jsonb_each(j)` (`key`, `value` as jsonb) or `jsonb_each_text(j)`
//! (`value` as text) — Odoo's analytic distributions are such objects
//! (`{"12": 60.0, "14": 40.0}`). DataFusion 55 cannot run a table function
//! over a column of another FROM item (no lateral table functions, and an
//! `unnest` in FROM cannot read an outer column), but it can expand a list
//! in a select list. So, when the object comes from one table of the same
//! FROM clause:
//!
//! ```text
//! FROM silver.account_move_line l, jsonb_each_text(l.analytic_distribution) AS d
//!   ⇒ FROM (SELECT l.*, unnest(json_object_keys(l.analytic_distribution)) AS "__d_key"
//!           FROM silver.account_move_line AS l) AS l
//! d.key   ⇒ l."__d_key"                                   (output name `key`)
//! d.value ⇒ (l.analytic_distribution ->> l."__d_key")     (`->` for jsonb_each; name `value`)
//! ```
//!
//! A row whose object is NULL or empty yields no row, as in Postgres. The
//! function may be a FROM item of its own or a `CROSS JOIN` / `JOIN … ON
//! true`; `key` and `value` must be qualified with its alias. Any other use
//! is left in place and refused with what to write instead.

use std::ops::ControlFlow;

use deltalake::datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, Ident, JoinConstraint, JoinOperator, Query,
    Select, SelectItem, SetExpr, TableFactor, Value, ValueWithSpan, visit_expressions_mut,
};
use deltalake::datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use deltalake::datafusion::sql::sqlparser::parser::Parser;

/// One expanded `jsonb_each`: its alias, the table alias it reads, the
/// object expression, and whether values are text (`jsonb_each_text`).
struct Expansion {
    alias: String,
    /// As the query spells it (quoting kept: `L` and `"L"` differ).
    table: Ident,
    object: Expr,
    text: bool,
}

impl Expansion {
    fn key_column(&self) -> Ident {
        Ident::with_quote('"', format!("__{}_key", self.alias))
    }

    fn key(&self) -> Expr {
        Expr::CompoundIdentifier(vec![self.table.clone(), self.key_column()])
    }

    fn value(&self) -> Expr {
        Expr::Nested(Box::new(Expr::BinaryOp {
            left: Box::new(self.object.clone()),
            op: if self.text {
                BinaryOperator::LongArrow
            } else {
                BinaryOperator::Arrow
            },
            right: Box::new(self.key()),
        }))
    }
}

/// Expand every supported `jsonb_each`/`jsonb_each_text` of `query`'s
/// selects in place.
pub(super) fn apply(query: &mut Query) {
    let mut expansions = Vec::new();
    collect(&mut query.body, &mut expansions);
    if expansions.is_empty() {
        return;
    }
    // Select items that are exactly `d.key` / `d.value` keep Postgres' names.
    name_select_items(&mut query.body, &expansions);
    let _ = visit_expressions_mut(query, |e: &mut Expr| {
        if let Expr::CompoundIdentifier(parts) = e
            && let [alias, column] = parts.as_slice()
            && let Some(x) = expansions.iter().find(|x| alias.value == x.alias)
        {
            match column.value.as_str() {
                "key" => *e = x.key(),
                "value" => *e = x.value(),
                _ => {}
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

fn collect(body: &mut SetExpr, out: &mut Vec<Expansion>) {
    match body {
        SetExpr::Select(select) => expand_select(select, out),
        SetExpr::SetOperation { left, right, .. } => {
            collect(left, out);
            collect(right, out);
        }
        _ => {}
    }
}

fn name_select_items(body: &mut SetExpr, expansions: &[Expansion]) {
    match body {
        SetExpr::Select(select) => {
            for item in &mut select.projection {
                if let SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) = item
                    && let [alias, column] = parts.as_slice()
                    && expansions.iter().any(|x| alias.value == x.alias)
                    && matches!(column.value.as_str(), "key" | "value")
                {
                    let name = column.clone();
                    let expr = Expr::CompoundIdentifier(parts.clone());
                    *item = SelectItem::ExprWithAlias { expr, alias: name };
                }
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            name_select_items(left, expansions);
            name_select_items(right, expansions);
        }
        _ => {}
    }
}

/// A `jsonb_each(…)` / `jsonb_each_text(…)` FROM item: (alias, object
/// argument, text values).
fn jsonb_each_call(factor: &TableFactor) -> Option<(String, Expr, bool)> {
    let TableFactor::Table {
        name,
        alias: Some(alias),
        args: Some(args),
        ..
    } = factor
    else {
        return None;
    };
    let text = match name.to_string().to_ascii_lowercase().as_str() {
        "jsonb_each" | "json_each" => false,
        "jsonb_each_text" | "json_each_text" => true,
        _ => return None,
    };
    let [FunctionArg::Unnamed(FunctionArgExpr::Expr(object))] = args.args.as_slice() else {
        return None;
    };
    if !alias.columns.is_empty() {
        return None;
    }
    Some((alias.name.value.clone(), object.clone(), text))
}

/// The one table alias an expression's qualified columns name.
fn single_qualifier(e: &Expr) -> Option<Ident> {
    let mut seen: Option<Ident> = None;
    let mut other = false;
    let _ = deltalake::datafusion::sql::sqlparser::ast::visit_expressions(e, |e: &Expr| {
        match e {
            Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
                let q = parts[0].clone();
                match &seen {
                    Some(s) if s.value != q.value => other = true,
                    _ => seen = Some(q),
                }
            }
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => other = true,
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    if other { None } else { seen }
}

/// The alias a plain table or derived table is known by in the query.
fn factor_alias(factor: &TableFactor) -> Option<String> {
    match factor {
        TableFactor::Table {
            alias: Some(a),
            args: None,
            ..
        }
        | TableFactor::Derived { alias: Some(a), .. } => Some(a.name.value.clone()),
        TableFactor::Table {
            name,
            alias: None,
            args: None,
            ..
        } => name.0.last().map(|p| p.to_string()),
        _ => None,
    }
}

/// The table factor `(SELECT a.*, unnest(json_object_keys(object)) AS
/// "__d_key" FROM <factor>) AS a`.
fn expanded(factor: &TableFactor, x: &Expansion) -> Option<TableFactor> {
    let sql = format!(
        "(SELECT {table}.*, unnest(json_object_keys({object})) AS {key} FROM {factor}) AS {table}",
        table = x.table,
        object = x.object,
        key = x.key_column(),
    );
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&sql)
        .ok()?
        .parse_table_factor()
        .ok()
}

fn is_cross(op: &JoinOperator) -> bool {
    match op {
        JoinOperator::CrossJoin(_) => true,
        JoinOperator::Join(c) | JoinOperator::Inner(c) => matches!(
            c,
            JoinConstraint::On(Expr::Value(ValueWithSpan {
                value: Value::Boolean(true),
                ..
            }))
        ),
        _ => false,
    }
}

fn expand_select(select: &mut Select, out: &mut Vec<Expansion>) {
    // Pass 1: find the calls (a FROM item of its own, or a cross join) and
    // the FROM item whose table they read.
    let mut found: Vec<(Expansion, (usize, Option<usize>))> = Vec::new();
    for (i, twj) in select.from.iter().enumerate() {
        let mut places = vec![(&twj.relation, None)];
        places.extend(
            twj.joins
                .iter()
                .enumerate()
                .filter(|(_, j)| is_cross(&j.join_operator))
                .map(|(k, j)| (&j.relation, Some(k))),
        );
        for (factor, k) in places {
            let Some((alias, object, text)) = jsonb_each_call(factor) else {
                continue;
            };
            let Some(table) = single_qualifier(&object) else {
                continue;
            };
            found.push((
                Expansion {
                    alias,
                    table,
                    object,
                    text,
                },
                (i, k),
            ));
        }
    }
    // Pass 2, last first so the positions stay valid: replace the table
    // with its expansion and drop the call.
    for (x, (i, k)) in found.into_iter().rev() {
        let target = select.from.iter_mut().find_map(|twj| {
            if factor_alias(&twj.relation).as_deref() == Some(x.table.value.as_str()) {
                return Some(&mut twj.relation);
            }
            twj.joins
                .iter_mut()
                .map(|j| &mut j.relation)
                .find(|f| factor_alias(f).as_deref() == Some(x.table.value.as_str()))
        });
        let Some(target) = target else { continue };
        let Some(new) = expanded(target, &x) else {
            continue;
        };
        *target = new;
        match k {
            Some(k) => {
                select.from[i].joins.remove(k);
            }
            None => {
                let mut removed = select.from.remove(i);
                // Joins hanging off the call now hang off the previous item.
                if !removed.joins.is_empty() {
                    match select.from.get_mut(i.saturating_sub(1)) {
                        Some(prev) if i > 0 => prev.joins.append(&mut removed.joins),
                        _ => {
                            select.from.insert(i, removed);
                            continue;
                        }
                    }
                }
            }
        }
        out.push(x);
    }
}

#[cfg(test)]
mod tests {
    use deltalake::datafusion::sql::parser::{DFParser, Statement as DfStatement};
    use deltalake::datafusion::sql::sqlparser::ast::Statement;

    fn rewritten(sql: &str) -> String {
        let mut parsed =
            DFParser::parse_sql_with_dialect(sql, &super::PostgreSqlDialect {}).unwrap();
        let Some(DfStatement::Statement(mut s)) = parsed.pop_front() else {
            panic!("not a statement: {sql}");
        };
        if let Statement::Query(q) = s.as_mut() {
            super::apply(q);
        }
        s.to_string()
    }

    #[test]
    fn a_jsonb_each_over_one_table_becomes_an_unnest_in_its_select_list() {
        assert_eq!(
            rewritten(
                "SELECT l.id, d.key, d.value FROM silver.aml l, jsonb_each_text(l.dist) AS d WHERE d.value::numeric > 0"
            ),
            "SELECT l.id, l.\"__d_key\" AS key, (l.dist ->> l.\"__d_key\") AS value \
             FROM (SELECT l.*, unnest(json_object_keys(l.dist)) AS \"__d_key\" FROM silver.aml l) AS l \
             WHERE (l.dist ->> l.\"__d_key\")::NUMERIC > 0"
        );
        // As a CROSS JOIN, with jsonb values (->).
        assert_eq!(
            rewritten("SELECT d.key FROM silver.aml AS l CROSS JOIN jsonb_each(l.dist) d"),
            "SELECT l.\"__d_key\" AS key \
             FROM (SELECT l.*, unnest(json_object_keys(l.dist)) AS \"__d_key\" FROM silver.aml AS l) AS l"
        );
    }

    #[test]
    fn other_uses_are_left_for_the_refusal() {
        // Over two tables' columns, or without an alias: unchanged.
        for sql in [
            "SELECT d.key FROM a, b, jsonb_each(a.j || b.j) AS d",
            "SELECT key FROM a, jsonb_each(a.j)",
        ] {
            assert!(rewritten(sql).contains("jsonb_each"), "{sql}");
        }
    }
}
