//! Postgres semantics for gold SQL where DataFusion's differ.
//!
//! Gold models are written in PostgreSQL syntax, run by DataFusion 55 over
//! the silver and gold Delta tables, and checked against Postgres running
//! the same query (values *and* types; `docs/gold-sql.md` lists what is
//! supported). A query goes through three stages:
//!
//! ```text
//!  query text ──parse (PostgreSQL dialect)──▶ AST
//!     AST ──rewrite::apply──▶ AST          (Postgres readings of the text)
//!     AST ──plan (session: JSON operators, date_trunc, wide products)──▶ plan
//!     plan ──read-only check, stored types──▶ DataFrame
//! ```
//!
//! - [`rewrite`]: rewrites on the parsed AST, each with a test, and the
//!   constructs refused with what to write instead.
//! - JSON: `->`, `->>`, `#>`, `#>>`, `?` over JSON text (silver keeps
//!   `json`/`jsonb` as Postgres' text) by `datafusion-functions-json`.
//! - [`date_trunc`]: Postgres' result types.
//! - [`jsonb_each`]: `FROM t, jsonb_each(t.j) AS d` as an unnest of the keys.
//! - [`age`]: Postgres' symbolic `age()`; an interval is never a stored column.
//! - [`date_diff`]: `date - date` is an `int4` number of days.
//! - [`numeric`]: products of unconstrained `numeric` columns.
//! - [`sums`]: `sum`/`avg` of decimals in 256 bits (never wrap).
//! - Stored types: a JSON value (`j -> 'k'`) is stored as its JSON text, as
//!   Postgres prints `jsonb`; nanosecond timestamps as microseconds (Delta's
//!   unit, and Postgres').

mod age;
mod date_diff;
mod date_trunc;
mod jsonb_each;
mod numeric;
mod rewrite;
mod sums;

use std::sync::Arc;

use arrow::datatypes::{DataType, TimeUnit};
use deltalake::datafusion::common::{Column, Result as DfResult, TableReference, plan_err};
use deltalake::datafusion::config::Dialect;
use deltalake::datafusion::dataframe::DataFrame;
use deltalake::datafusion::execution::FunctionRegistry;
use deltalake::datafusion::execution::context::SQLOptions;
use deltalake::datafusion::execution::session_state::SessionState;
use deltalake::datafusion::logical_expr::{Expr, ExprSchemable};
use deltalake::datafusion::prelude::SessionContext;
use deltalake::datafusion::sql::parser::Statement as DfStatement;

/// Register the Postgres-typed functions and operators in a session's
/// state (replacing DataFusion's functions of the same names).
pub(crate) fn register(state: &mut SessionState) {
    // Registering into a `SessionState` cannot fail: its registry methods
    // only insert (the `Result` is the `FunctionRegistry` trait's).
    let _ = datafusion_functions_json::register_all(state);
    let _ = state.register_udf(Arc::new(date_trunc::udf()));
    let _ = state.register_udf(Arc::new(age::udf()));
    let _ = state.register_expr_planner(Arc::new(numeric::WideProduct));
    let _ = state.register_expr_planner(Arc::new(date_diff::DateDifference));
    for udaf in sums::udafs() {
        let _ = state.register_udaf(Arc::new(udaf));
    }
    for udf in numeric::integer_casts() {
        let _ = state.register_udf(Arc::new(udf));
    }
}

/// Plan one read-only query written in PostgreSQL syntax, with the lake's
/// scale for unconstrained `numeric` (`MEDALLION_NUMERIC_SCALE`).
pub(crate) async fn plan(
    ctx: &SessionContext,
    sql: &str,
    numeric_scale: i8,
) -> DfResult<DataFrame> {
    Parsed::new(ctx, sql, numeric_scale)?.plan(ctx).await
}

/// A query parsed and rewritten, not planned yet: what it reads can be
/// checked (and registered) first, without parsing it twice.
pub(crate) struct Parsed {
    state: SessionState,
    statement: DfStatement,
    numeric_scale: i8,
}

impl Parsed {
    /// Parse `sql` (one SELECT in PostgreSQL syntax) and apply the rewrites.
    pub(crate) fn new(ctx: &SessionContext, sql: &str, numeric_scale: i8) -> DfResult<Parsed> {
        // The state shares the context's catalogs: tables registered in
        // `ctx` after this are visible to the plan.
        let state = ctx.state();
        let mut statement = state.sql_to_statement(sql, &Dialect::PostgreSQL)?;
        match &mut statement {
            DfStatement::Statement(s) => rewrite::apply(s, numeric_scale)?,
            _ => return plan_err!("a gold query is one SELECT statement"),
        }
        Ok(Parsed {
            state,
            statement,
            numeric_scale,
        })
    }

    /// Every table the rewritten query names (common table expressions
    /// included, as bare names).
    pub(crate) fn tables(&self) -> DfResult<Vec<TableReference>> {
        self.state.resolve_table_references(&self.statement)
    }

    /// The plan, checked read-only, with the types Delta stores.
    pub(crate) async fn plan(self, ctx: &SessionContext) -> DfResult<DataFrame> {
        let plan = self.state.statement_to_plan(self.statement).await?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)?;
        // Analyzed first, so the schema is the one execution produces: a
        // UNION of a lake numeric and a 256-bit sum is typed by the first
        // branch until type coercion widens it, and the stored types follow
        // from it.
        let plan = self.state.optimize(&plan)?;
        stored_types(ctx.execute_logical_plan(plan).await?, self.numeric_scale)
    }
}

/// Project the columns Delta cannot store as they are to what Postgres
/// would print: JSON values to JSON text, nanoseconds to microseconds,
/// 256-bit decimals to `decimal(38, s)` with at most the lake's scale.
fn stored_types(df: DataFrame, numeric_scale: i8) -> DfResult<DataFrame> {
    let schema = df.schema().clone();
    let mut changed = false;
    let mut exprs = Vec::with_capacity(schema.fields().len());
    for (qualifier, field) in schema.iter() {
        let column = Expr::Column(Column::new(qualifier.cloned(), field.name()));
        let stored = match field.data_type() {
            t if datafusion_functions_json::JSON_UNION_DATA_TYPE.eq(t) => Some(
                datafusion_functions_json::udfs::json_union_to_text_udf()
                    .call(vec![column.clone()]),
            ),
            // A 256-bit sum or average: back to what Delta stores, by a
            // checked cast (a value that does not fit is an error).
            DataType::Decimal256(_, s) => Some(
                column
                    .clone()
                    .cast_to(&DataType::Decimal128(38, (*s).min(numeric_scale)), &schema)?,
            ),
            DataType::Interval(_) | DataType::Duration(_) => {
                return plan_err!(
                    "column {} is an interval, which a gold table cannot store (Delta has no interval type): store a number instead, e.g. extract(year FROM age(d)) or d2 - d1 for days",
                    field.name()
                );
            }
            DataType::Timestamp(TimeUnit::Nanosecond, tz) => Some(column.clone().cast_to(
                &DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
                &schema,
            )?),
            _ => None,
        };
        match stored {
            Some(e) => {
                changed = true;
                exprs.push(e.alias(field.name()));
            }
            None => exprs.push(column),
        }
    }
    if changed { df.select(exprs) } else { Ok(df) }
}

#[cfg(test)]
mod tests {
    async fn run(sql: &str) -> Result<Vec<String>, String> {
        let ctx = crate::lake::session();
        let df = super::plan(&ctx, sql, 24)
            .await
            .map_err(|e| e.to_string())?;
        let batches = df.collect().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for b in &batches {
            let opts = arrow::util::display::FormatOptions::default();
            let f = arrow::util::display::ArrayFormatter::try_new(b.column(0).as_ref(), &opts)
                .map_err(|e| e.to_string())?;
            for i in 0..b.num_rows() {
                out.push(f.value(i).to_string());
            }
        }
        Ok(out)
    }

    #[tokio::test]
    async fn numbers_that_do_not_fit_are_errors_never_wrong_values() {
        // A product of two lake-scale numerics that fits: exact.
        let product = run("SELECT CAST(12345678.123456 AS numeric) * CAST(1000.5 AS numeric)")
            .await
            .unwrap();
        assert_eq!(product, vec!["12351850962.517728000000000000000000"]);
        // Beyond 14 integer digits: an error naming the type.
        let e = run("SELECT CAST(99999999999 AS numeric) * CAST(99999999999 AS numeric)")
            .await
            .unwrap_err();
        assert!(e.contains("Decimal128(38, 24)"), "{e}");
        // A sum that fits 38 digits only in 256 bits is exact in the query
        // and an error where it is stored, never a wrapped value.
        let values =
            "(VALUES (CAST(90000000000000 AS numeric)), (CAST(90000000000000 AS numeric))) v(x)";
        let e = run(&format!("SELECT sum(x) FROM {values}"))
            .await
            .unwrap_err();
        assert!(e.contains("Decimal128(38, 24)"), "{e}");
        let halved = run(&format!("SELECT sum(x) / 2 AS s FROM {values}"))
            .await
            .unwrap();
        assert_eq!(halved, vec!["90000000000000.000000000000000000000000"]);
        let avg = run(&format!("SELECT avg(x) FROM {values}")).await.unwrap();
        assert_eq!(avg, vec!["90000000000000.000000000000000000000000"]);
        // Division: by zero an error, otherwise rounded at the lake scale.
        let e = run("SELECT CAST(10 AS numeric) / CAST(0 AS numeric)")
            .await
            .unwrap_err();
        assert!(e.contains("division by zero"), "{e}");
        let third = run("SELECT CAST(2 AS numeric) / CAST(3 AS numeric)")
            .await
            .unwrap();
        assert_eq!(third, vec!["0.666666666666666666666667"]);
    }

    #[tokio::test]
    async fn a_union_of_a_numeric_and_a_sum_is_stored_as_its_schema_says() {
        // The second branch is a 256-bit sum: the union's type is only
        // settled by type coercion, and what is written must be what the
        // schema declares (it once wrote Decimal256 under a Decimal128
        // schema).
        let ctx = crate::lake::session();
        let df = super::plan(
            &ctx,
            "WITH v(x) AS (VALUES (CAST(1.5 AS numeric)), (CAST(2 AS numeric))), \
             e AS (SELECT -sum(x) AS s FROM v) SELECT x FROM v UNION ALL SELECT s FROM e",
            24,
        )
        .await
        .unwrap();
        let declared = df.schema().field(0).data_type().clone();
        assert_eq!(declared, arrow::datatypes::DataType::Decimal128(38, 24));
        let batches = df.collect().await.unwrap();
        assert!(!batches.is_empty());
        for b in &batches {
            assert_eq!(b.schema().field(0).data_type(), &declared);
        }
    }
}
