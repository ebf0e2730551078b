//! `date - date` with Postgres' result type.
//!
//! Postgres gives the difference of two dates as an `integer` number of
//! days; DataFusion 55 gives the same number of days as a `bigint`. The
//! difference is planned as DataFusion's, cast to `int4` (a difference of
//! two dates always fits: Postgres dates span fewer than 2^31 days).

use arrow::datatypes::DataType;
use deltalake::datafusion::common::{DFSchema, Result as DfResult};
use deltalake::datafusion::logical_expr::expr::Cast;
use deltalake::datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use deltalake::datafusion::logical_expr::{Expr, ExprSchemable, Operator, binary_expr};
use deltalake::datafusion::sql::sqlparser::ast::BinaryOperator;

/// Plans `date - date` as an `int4` number of days.
#[derive(Debug)]
pub(super) struct DateDifference;

/// Whether `left - right` is a difference of two dates.
fn is_date_difference(left: &DataType, right: &DataType) -> bool {
    matches!(left, DataType::Date32 | DataType::Date64)
        && matches!(right, DataType::Date32 | DataType::Date64)
}

impl ExprPlanner for DateDifference {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        schema: &DFSchema,
    ) -> DfResult<PlannerResult<RawBinaryExpr>> {
        if expr.op != BinaryOperator::Minus {
            return Ok(PlannerResult::Original(expr));
        }
        let (Ok(l), Ok(r)) = (expr.left.get_type(schema), expr.right.get_type(schema)) else {
            return Ok(PlannerResult::Original(expr));
        };
        if !is_date_difference(&l, &r) {
            return Ok(PlannerResult::Original(expr));
        }
        let days = binary_expr(expr.left, Operator::Minus, expr.right);
        Ok(PlannerResult::Planned(Expr::Cast(Cast::new(
            Box::new(days),
            DataType::Int32,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int32Array};

    #[test]
    fn only_two_dates_are_a_day_count() {
        assert!(is_date_difference(&DataType::Date32, &DataType::Date32));
        assert!(!is_date_difference(
            &DataType::Date32,
            &DataType::Interval(arrow::datatypes::IntervalUnit::MonthDayNano)
        ));
        assert!(!is_date_difference(&DataType::Int64, &DataType::Date32));
    }

    #[tokio::test]
    async fn a_date_difference_is_an_int4_of_days() {
        let ctx = crate::lake::session();
        let df = super::super::plan(
            &ctx,
            "SELECT DATE '2024-03-01' - DATE '2024-02-01' AS d, DATE '2024-01-01' - DATE '2024-03-01' AS n",
            24,
        )
        .await
        .unwrap();
        let batches = df.collect().await.unwrap();
        let b = &batches[0];
        assert_eq!(b.schema().field(0).data_type(), &DataType::Int32);
        let d = b.column(0).as_any().downcast_ref::<Int32Array>().unwrap();
        let n = b.column(1).as_any().downcast_ref::<Int32Array>().unwrap();
        assert_eq!((d.value(0), n.value(0), d.len()), (29, -60, 1));
    }
}
