//! Products of unconstrained `numeric` columns.
//!
//! Silver maps Postgres' unconstrained `numeric` (all Odoo money,
//! quantities and UoM factors) to `decimal(38, S)`, `S` =
//! `MEDALLION_NUMERIC_SCALE` (24 by default): every stored value exact, a
//! value that does not fit refused. DataFusion types a product of two
//! decimals with the sum of their scales and refuses one above 38
//! ("Output scale of Decimal128(38, 24) * Decimal128(38, 24) would exceed
//! max scale of 38"), so `price_unit * quantity` could not be planned.
//!
//! Such a product is computed in `decimal(76, s1 + s2)` (Decimal256: exact
//! for any two 38-digit operands) and the result is brought back to
//! `decimal(38, max(s1, s2))`, which Delta can store:
//!
//! - digits beyond `max(s1, s2)` decimal places are rounded half away from
//!   zero, as Postgres rounds a cast to a numeric scale (with the default
//!   scale, the 25th decimal place: operands with at most 12 decimal places
//!   each, as money, quantities and rates have, are never rounded);
//! - a product whose integer part does not fit `38 - max(s1, s2)` digits is
//!   an error at refresh ("cannot be represented in decimal(38, 24)"), never
//!   a wrong value. Lower `MEDALLION_NUMERIC_SCALE` (e.g. 12: 26 integer
//!   digits) or cast the operands to a narrower `numeric(p, s)` in the model.
//!
//! Products whose scale fits 38 are left to DataFusion.
//!
//! **Division.** DataFusion gives `decimal(38, 24) / decimal(38, 24)` the
//! scale 38 and scales the dividend by 10^38 first, which overflows for
//! every value. Such a quotient is [`numeric_div`]: computed exactly in
//! 256 bits and rounded half away from zero to `max(s1, s2)` decimals
//! (Postgres gives at least 16 significant digits; with the default scale
//! gold gives 24 decimals); a divisor of zero is an error, as in Postgres.
//!
//! **Casts to integers.** Postgres rounds `numeric` and floating point
//! values to the nearest integer (`1.5::int` = 2; floats ties to even);
//! DataFusion truncates (1). `x::int` (`smallint`, `bigint`, …) is planned
//! as `pg_int4(x)` etc.: rounded like Postgres, out of range an error.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Decimal128Array, Decimal256Array, PrimitiveArray};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{
    DataType, Decimal128Type, Decimal256Type, Float32Type, Float64Type, Int64Type, i256,
};
use deltalake::datafusion::common::{
    DFSchema, Result as DfResult, exec_err, internal_err, plan_err,
};
use deltalake::datafusion::logical_expr::expr::Cast;
use deltalake::datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use deltalake::datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use deltalake::datafusion::logical_expr::{Expr, ExprSchemable, Operator, binary_expr};
use deltalake::datafusion::sql::sqlparser::ast::BinaryOperator;

/// Plans `a * b` of two decimals whose scales add up beyond 38.
#[derive(Debug)]
pub(super) struct WideProduct;

/// The decimal result of `a * b` when DataFusion cannot type it:
/// `(s1, s2, result scale)`.
fn wide_product(left: &DataType, right: &DataType) -> Option<(i8, i8, i8)> {
    match (left, right) {
        (DataType::Decimal128(_, s1), DataType::Decimal128(_, s2))
            if *s1 >= 0 && *s2 >= 0 && i16::from(*s1) + i16::from(*s2) > 38 =>
        {
            Some((*s1, *s2, (*s1).max(*s2)))
        }
        _ => None,
    }
}

/// A decimal, or an integer as the decimal Postgres would read it.
fn as_decimal(t: &DataType) -> Option<(u8, i8)> {
    match t {
        DataType::Decimal128(p, s) if *s >= 0 => Some((*p, *s)),
        DataType::Decimal256(p, s) if *s >= 0 => Some((*p, *s)),
        t if t.is_integer() => Some((20, 0)),
        _ => None,
    }
}

/// Whether DataFusion would scale the dividend of `a / b` (one a decimal,
/// the other a decimal or an integer) beyond 38 digits: it gives the
/// quotient the scale `max(6, s1 + p2 + 1)`.
fn wide_quotient(left: &DataType, right: &DataType) -> bool {
    if !matches!(left, DataType::Decimal128(..)) && !matches!(right, DataType::Decimal128(..)) {
        return false;
    }
    match (as_decimal(left), as_decimal(right)) {
        (Some((_, s1)), Some((p2, _))) => i16::from(s1) + i16::from(p2) + 1 > 38,
        _ => false,
    }
}

fn pow10(n: u32) -> i256 {
    i256::from_i128(10).wrapping_pow(n)
}

/// `a / b` rounded half away from zero: both scaled integers.
fn div_round(a: i256, b: i256) -> i256 {
    let (q, r) = (a.wrapping_div(b), a.wrapping_rem(b));
    if r.wrapping_mul(i256::from_i128(2)).wrapping_abs() >= b.wrapping_abs() {
        if (a < i256::ZERO) != (b < i256::ZERO) {
            q.wrapping_sub(i256::ONE)
        } else {
            q.wrapping_add(i256::ONE)
        }
    } else {
        q
    }
}

/// Decimal division with Postgres' rounding at `max(s1, s2)` decimals.
#[derive(Debug, PartialEq, Eq, Hash)]
struct NumericDiv {
    signature: Signature,
}

impl Default for NumericDiv {
    fn default() -> Self {
        NumericDiv {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn decimal_scale(t: &DataType) -> DfResult<i8> {
    match t {
        DataType::Decimal128(_, s) | DataType::Decimal256(_, s) => Ok(*s),
        other => plan_err!("numeric division of {other}"),
    }
}

impl ScalarUDFImpl for NumericDiv {
    fn name(&self) -> &str {
        "numeric_div"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> DfResult<Vec<DataType>> {
        for a in args {
            decimal_scale(a)?;
        }
        Ok(args.to_vec())
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        let [a, b] = args else {
            return plan_err!("numeric_div takes two decimals");
        };
        let scale = decimal_scale(a)?.max(decimal_scale(b)?);
        Ok(if is256(a) || is256(b) {
            DataType::Decimal256(76, scale)
        } else {
            DataType::Decimal128(38, scale)
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [a, b] = arrays.as_slice() else {
            return internal_err!("numeric_div takes two decimals");
        };
        let (s1, s2) = (decimal_scale(a.data_type())?, decimal_scale(b.data_type())?);
        let scale = s1.max(s2);
        // a / b at `scale`: (a · 10^(scale - s1 + s2)) / b, all integers.
        let factor = pow10((i16::from(scale) - i16::from(s1) + i16::from(s2)) as u32);
        let wide = is256(a.data_type()) || is256(b.data_type());
        let (digits, limit) = if wide {
            (76, pow10(76))
        } else {
            (38, pow10(38))
        };
        let (a, b) = (values_i256(a)?, values_i256(b)?);
        let out_of_range = || {
            exec_err!(
                "numeric value out of range: a quotient does not fit decimal({digits}, {scale}) (lower MEDALLION_NUMERIC_SCALE or cast to a narrower numeric)"
            )
        };
        let mut out: Vec<Option<i256>> = Vec::with_capacity(a.len());
        for (x, y) in a.into_iter().zip(b) {
            let (Some(x), Some(d)) = (x, y) else {
                out.push(None);
                continue;
            };
            if d == i256::ZERO {
                return exec_err!("division by zero");
            }
            let Some(scaled) = x.checked_mul(factor) else {
                return out_of_range();
            };
            let q = div_round(scaled, d);
            if q.wrapping_abs() >= limit {
                return out_of_range();
            }
            out.push(Some(q));
        }
        let array: ArrayRef = if wide {
            Arc::new(Decimal256Array::from(out).with_precision_and_scale(76, scale)?)
        } else {
            Arc::new(
                Decimal128Array::from(
                    out.into_iter()
                        .map(|q| q.and_then(|q| q.to_i128()))
                        .collect::<Vec<_>>(),
                )
                .with_precision_and_scale(38, scale)?,
            )
        };
        Ok(ColumnarValue::Array(array))
    }
}

fn is256(t: &DataType) -> bool {
    matches!(t, DataType::Decimal256(..))
}

/// A decimal column's values as 256-bit integers.
fn values_i256(a: &ArrayRef) -> DfResult<Vec<Option<i256>>> {
    Ok(match a.data_type() {
        DataType::Decimal128(..) => a
            .as_primitive::<Decimal128Type>()
            .iter()
            .map(|v| v.map(i256::from_i128))
            .collect(),
        DataType::Decimal256(..) => a.as_primitive::<Decimal256Type>().iter().collect(),
        other => return internal_err!("numeric_div of {other}"),
    })
}

/// The integer types a cast can name, by the function that casts to them.
pub(super) const INTEGER_CASTS: [(&str, DataType); 3] = [
    ("pg_int2", DataType::Int16),
    ("pg_int4", DataType::Int32),
    ("pg_int8", DataType::Int64),
];

/// The three integer casts with Postgres' rounding.
pub(super) fn integer_casts() -> Vec<ScalarUDF> {
    INTEGER_CASTS
        .iter()
        .map(|(name, target)| {
            ScalarUDF::new_from_impl(IntegerCast {
                name,
                target: target.clone(),
                signature: Signature::user_defined(Volatility::Immutable),
            })
        })
        .collect()
}

/// `x::int` as Postgres: numeric and floats rounded, others cast.
#[derive(Debug, PartialEq, Eq, Hash)]
struct IntegerCast {
    name: &'static str,
    target: DataType,
    signature: Signature,
}

fn rounded_decimal(a: &Decimal128Array) -> PrimitiveArray<Int64Type> {
    let s = a.scale();
    a.unary_opt(|v| {
        if s <= 0 {
            return i64::try_from(v.checked_mul(10i128.checked_pow(s.unsigned_abs() as u32)?)?)
                .ok();
        }
        let f = 10i128.pow(s as u32);
        let (q, r) = (v / f, v % f);
        let q = if r.abs() * 2 >= f { q + v.signum() } else { q };
        i64::try_from(q).ok()
    })
}

impl ScalarUDFImpl for IntegerCast {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> DfResult<Vec<DataType>> {
        match args {
            [_] => Ok(args.to_vec()),
            _ => plan_err!("{} takes one value", self.name),
        }
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(self.target.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [a] = arrays.as_slice() else {
            return internal_err!("{} takes one value", self.name);
        };
        let rounded: ArrayRef = match a.data_type() {
            DataType::Decimal128(..) => {
                let a = a.as_primitive::<Decimal128Type>();
                let r = rounded_decimal(a);
                if r.null_count() != a.null_count() {
                    return exec_err!(
                        "{}: a numeric value is out of range for an integer",
                        self.name
                    );
                }
                Arc::new(r)
            }
            DataType::Float64 => Arc::new(
                a.as_primitive::<Float64Type>()
                    .unary::<_, Float64Type>(f64::round_ties_even),
            ),
            DataType::Float32 => Arc::new(
                a.as_primitive::<Float32Type>()
                    .unary::<_, Float32Type>(f32::round_ties_even),
            ),
            _ => Arc::clone(a),
        };
        // The range check and any text parsing are the cast's: it fails
        // rather than giving NULL (`safe: false`), as Postgres does.
        let options = CastOptions {
            safe: false,
            ..Default::default()
        };
        Ok(ColumnarValue::Array(cast_with_options(
            &rounded,
            &self.target,
            &options,
        )?))
    }
}

impl ExprPlanner for WideProduct {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        schema: &DFSchema,
    ) -> DfResult<PlannerResult<RawBinaryExpr>> {
        if !matches!(expr.op, BinaryOperator::Multiply | BinaryOperator::Divide) {
            return Ok(PlannerResult::Original(expr));
        }
        let (Ok(l), Ok(r)) = (expr.left.get_type(schema), expr.right.get_type(schema)) else {
            return Ok(PlannerResult::Original(expr));
        };
        // A 256-bit sum or average as an operand stays exact in 256 bits:
        // its products are brought back to the larger scale (as below), its
        // quotients are `numeric_div` in 256 bits.
        let has256 = matches!(l, DataType::Decimal256(..)) || matches!(r, DataType::Decimal256(..));
        if expr.op == BinaryOperator::Divide {
            if !has256 && !wide_quotient(&l, &r) {
                return Ok(PlannerResult::Original(expr));
            }
            if !(as_decimal(&l).is_some() && as_decimal(&r).is_some()) {
                return Ok(PlannerResult::Original(expr));
            }
            let decimal = |e: Expr, t: &DataType| match t {
                DataType::Decimal128(..) | DataType::Decimal256(..) => e,
                _ => Expr::Cast(Cast::new(Box::new(e), DataType::Decimal128(20, 0))),
            };
            let div = ScalarUDF::new_from_impl(NumericDiv::default());
            return Ok(PlannerResult::Planned(
                div.call(vec![decimal(expr.left, &l), decimal(expr.right, &r)]),
            ));
        }
        // Computed in `decimal(76, s1 + s2)`, then brought back to the larger
        // scale: 256-bit where an operand is, what Delta stores otherwise.
        let (s1, s2, target) = if has256 {
            let (Some((_, s1)), Some((_, s2))) = (as_decimal(&l), as_decimal(&r)) else {
                return Ok(PlannerResult::Original(expr));
            };
            if i16::from(s1) + i16::from(s2) > 76 {
                return plan_err!(
                    "a product of numerics with {s1} and {s2} decimal places exceeds 76 digits of scale"
                );
            }
            (s1, s2, DataType::Decimal256(76, s1.max(s2)))
        } else {
            let Some((s1, s2, scale)) = wide_product(&l, &r) else {
                return Ok(PlannerResult::Original(expr));
            };
            (s1, s2, DataType::Decimal128(38, scale))
        };
        let wide = |e: Expr, s: i8| Expr::Cast(Cast::new(Box::new(e), DataType::Decimal256(76, s)));
        let product = binary_expr(
            wide(expr.left, s1),
            Operator::Multiply,
            wide(expr.right, s2),
        );
        Ok(PlannerResult::Planned(Expr::Cast(Cast::new(
            Box::new(product),
            target,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_products_datafusion_cannot_type_are_widened() {
        let d = DataType::Decimal128;
        assert_eq!(wide_product(&d(38, 24), &d(38, 24)), Some((24, 24, 24)));
        assert_eq!(wide_product(&d(38, 24), &d(38, 15)), Some((24, 15, 24)));
        assert_eq!(wide_product(&d(38, 24), &d(38, 14)), None);
        assert_eq!(wide_product(&d(20, 2), &d(38, 24)), None);
        assert_eq!(wide_product(&d(38, 24), &DataType::Int64), None);
        assert_eq!(wide_product(&DataType::Float64, &d(38, 24)), None);
        assert!(wide_quotient(&d(38, 24), &d(38, 24)));
        assert!(!wide_quotient(&d(10, 2), &d(10, 2)));
        assert!(wide_quotient(&d(38, 24), &DataType::Int64));
        assert!(wide_quotient(&DataType::Int32, &d(38, 24)));
        assert!(!wide_quotient(&DataType::Int64, &DataType::Int64));
        assert!(!wide_quotient(&d(38, 24), &DataType::Float64));
    }

    #[tokio::test]
    async fn products_and_quotients_of_sums_are_planned_as_stored_numerics() {
        // sum() is 256-bit; sum * sum / sum once overflowed in DataFusion's
        // 256-bit division: the sums are narrowed to decimal(38, 24) first.
        let ctx = crate::lake::session();
        let df = super::super::plan(
            &ctx,
            "WITH v(q, c) AS (VALUES (CAST(1000 AS numeric), CAST(13550.0465 AS numeric)), \
             (CAST(-10 AS numeric), CAST(1.5 AS numeric))) \
             SELECT round(sum(c) * sum(q) / sum(q), 2) AS v, sum(c) / 3 AS third FROM v",
            24,
        )
        .await
        .unwrap();
        let batches = df.collect().await.unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(text.contains("13551.55"), "{text}");
        assert!(text.contains("4517.182166666666666666666667"), "{text}");
    }

    #[test]
    fn quotients_round_half_away_from_zero() {
        let i = i256::from_i128;
        assert_eq!(div_round(i(10), i(4)), i(3)); // 2.5 → 3
        assert_eq!(div_round(i(-10), i(4)), i(-3));
        assert_eq!(div_round(i(10), i(-4)), i(-3));
        assert_eq!(div_round(i(9), i(4)), i(2)); // 2.25 → 2
        assert_eq!(div_round(i(-9), i(4)), i(-2));
    }

    #[test]
    fn decimals_round_to_the_nearest_integer_ties_away() {
        let a = Decimal128Array::from(vec![Some(15), Some(-15), Some(14), Some(-25), None])
            .with_precision_and_scale(38, 1)
            .unwrap();
        let r = rounded_decimal(&a);
        assert_eq!(
            r.iter().collect::<Vec<_>>(),
            vec![Some(2), Some(-2), Some(1), Some(-3), None]
        );
    }
}
