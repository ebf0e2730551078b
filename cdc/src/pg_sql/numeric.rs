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
//!   an error at refresh ("a product does not fit Decimal128(38, 24)"), never
//!   a wrong value. Lower `MEDALLION_NUMERIC_SCALE` (e.g. 12: 26 integer
//!   digits) or cast the operands to a narrower `numeric(p, s)` in the model.
//!
//! Products whose scale fits 38 are left to DataFusion. The product of two
//! stored numerics is `numeric_mul` ([`NumericMul`]): where the operands' trailing zeros
//! cover the decimals to drop (money, quantities and rates at the lake
//! scale have at least 12 each), it is one checked 128-bit multiplication,
//! exact; otherwise the 256-bit product, rounded as above.
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

/// Products of two `decimal(38, _)` scaled integers at `drop` fewer
/// decimals than their scales add up to.
///
/// Fast path: the dropped decimals are taken from the operands' own
/// trailing zeros (a value stored with at most 12 decimals at scale 24 has
/// 12 zero digits), then one checked 128-bit multiplication — exact,
/// nothing rounded. Otherwise the product is formed in 256 bits and rounded
/// half away from zero.
struct ScaledProduct {
    /// Powers of ten `(px, py)` to divide the operands by, tried in order.
    splits: [(ExactPow10, ExactPow10); 3],
    /// `10^drop`, for the 256-bit path.
    divisor: i256,
}

/// 10^38: a `decimal(38, _)` value's magnitude is below it.
const DECIMAL128_LIMIT: i128 = 10i128.pow(38);

impl ScaledProduct {
    fn new(drop: u32) -> Self {
        let p = ExactPow10::new;
        let half = drop / 2;
        ScaledProduct {
            splits: [(p(drop - half), p(half)), (p(drop), p(0)), (p(0), p(drop))],
            divisor: pow10(drop),
        }
    }

    /// `a · b`, `None` where it does not fit 38 digits.
    fn of(&self, a: i128, b: i128) -> Option<i128> {
        for (px, py) in self.splits {
            if let (Some(x), Some(y)) = (px.divide(a), py.divide(b)) {
                return x.checked_mul(y).filter(|p| p.abs() < DECIMAL128_LIMIT);
            }
        }
        let product = i256::from_i128(a).checked_mul(i256::from_i128(b))?;
        let q = div_round(product, self.divisor).to_i128()?;
        (q.abs() < DECIMAL128_LIMIT).then_some(q)
    }
}

/// Division by `10^k` (k ≤ 38) where it leaves no remainder, without a
/// 128-bit division (a library call of tens of cycles, per value):
/// `10^k = 2^k · 5^k`; the `2^k` is a shift, and an exact division by the
/// odd `5^k` is a multiplication by its inverse modulo 2^128 (Granlund and
/// Montgomery, "Division by invariant integers using multiplication", §9).
#[derive(Clone, Copy, Debug)]
struct ExactPow10 {
    k: u32,
    /// `5^k · inverse ≡ 1 (mod 2^128)`.
    inverse: u128,
    /// `(2^128 − 1) / 5^k`: a product above it had a remainder.
    limit: u128,
}

impl ExactPow10 {
    fn new(k: u32) -> Self {
        let five = 5u128.pow(k);
        // Newton's iteration doubles the correct low bits: 3 (an odd d
        // is its own inverse mod 8) → 6 → … → 192.
        let mut inverse = five;
        for _ in 0..6 {
            inverse = inverse.wrapping_mul(2u128.wrapping_sub(five.wrapping_mul(inverse)));
        }
        ExactPow10 {
            k,
            inverse,
            limit: u128::MAX / five,
        }
    }

    /// `a / 10^k` when `10^k` divides `a`, else `None`.
    fn divide(self, a: i128) -> Option<i128> {
        if self.k == 0 {
            return Some(a);
        }
        let u = a.unsigned_abs();
        if u.trailing_zeros() < self.k {
            return None; // not even divisible by 2^k (0 has 128 zeros)
        }
        let q = (u >> self.k).wrapping_mul(self.inverse);
        if q > self.limit {
            return None;
        }
        // q ≤ |a| / 10 < 2^127: a valid i128 of either sign.
        let q = q as i128;
        Some(if a < 0 { -q } else { q })
    }
}

/// Quotients of two `decimal(38, _)` scaled integers:
/// `round(x · 10^e / d)`, half away from zero.
///
/// Fast path: the divisor's trailing zeros cancel part of `10^e` (an
/// integer divisor stored at scale 24 cancels all of it, one with at most
/// 12 decimals half), then 128-bit arithmetic where the dividend times the
/// rest of `10^e` fits. Otherwise 256 bits.
struct ScaledQuotient {
    /// `(10^j, 10^(e - j))`: divisor stripped of `j` zeros, dividend scaled
    /// by the rest; larger `j` first.
    strips: [(ExactPow10, i128); 3],
    /// `10^e`, for the 256-bit path.
    factor: i256,
}

impl ScaledQuotient {
    fn new(e: u32) -> Self {
        let strip = |j: u32| match (10i128.checked_pow(j), 10i128.checked_pow(e - j)) {
            (Some(_), Some(pe)) => (ExactPow10::new(j), pe),
            _ => (ExactPow10::new(0), 0),
        };
        ScaledQuotient {
            strips: [strip(e), strip(e / 2), strip(0)],
            factor: pow10(e),
        }
    }

    /// `x / d` (`d` not zero), `None` where it does not fit 38 digits.
    fn of(&self, x: i128, d: i128) -> Option<i128> {
        for (pj, pe) in self.strips {
            // `pe` 0: 10^(e - j) does not fit 128 bits; 256 bits below.
            if pe != 0
                && let Some(m) = pj.divide(d)
            {
                let Some(n) = x.checked_mul(pe) else {
                    break; // a smaller `j` only makes `n` larger
                };
                let (q, r) = (n.checked_div(m)?, n % m);
                let q = if r.unsigned_abs() * 2 >= m.unsigned_abs() {
                    if (n < 0) != (m < 0) { q - 1 } else { q + 1 }
                } else {
                    q
                };
                return (q.abs() < DECIMAL128_LIMIT).then_some(q);
            }
        }
        let scaled = i256::from_i128(x).checked_mul(self.factor)?;
        let q = div_round(scaled, i256::from_i128(d)).to_i128()?;
        (q.abs() < DECIMAL128_LIMIT).then_some(q)
    }
}

/// `a * b` of two `decimal(38, s)` whose scales add up beyond 38: exact
/// where it can be, rounded half away from zero at `max(s1, s2)` decimals,
/// an error where the result does not fit `decimal(38, max(s1, s2))`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct NumericMul {
    signature: Signature,
}

impl Default for NumericMul {
    fn default() -> Self {
        NumericMul {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for NumericMul {
    fn name(&self) -> &str {
        "numeric_mul"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> DfResult<Vec<DataType>> {
        match args {
            [DataType::Decimal128(..), DataType::Decimal128(..)] => Ok(args.to_vec()),
            _ => plan_err!("numeric_mul takes two decimal(38, s)"),
        }
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        let [a, b] = args else {
            return plan_err!("numeric_mul takes two decimals");
        };
        Ok(DataType::Decimal128(
            38,
            decimal_scale(a)?.max(decimal_scale(b)?),
        ))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [a, b] = arrays.as_slice() else {
            return internal_err!("numeric_mul takes two decimals");
        };
        let (s1, s2) = (decimal_scale(a.data_type())?, decimal_scale(b.data_type())?);
        let scale = s1.max(s2);
        let drop = (i16::from(s1) + i16::from(s2) - i16::from(scale)) as u32;
        let (a, b) = (
            a.as_primitive::<Decimal128Type>(),
            b.as_primitive::<Decimal128Type>(),
        );
        let scaled = ScaledProduct::new(drop);
        let product: Decimal128Array = arrow::compute::kernels::arity::try_binary(a, b, |x, y| {
            scaled.of(x, y).ok_or_else(|| {
                arrow::error::ArrowError::ComputeError(format!(
                    "numeric value out of range: a product does not fit Decimal128(38, {scale}) \
                         (lower MEDALLION_NUMERIC_SCALE or cast the operands to a narrower numeric)"
                ))
            })
        })?;
        Ok(ColumnarValue::Array(Arc::new(
            product.with_precision_and_scale(38, scale)?,
        )))
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
        let e = (i16::from(scale) - i16::from(s1) + i16::from(s2)) as u32;
        let wide = is256(a.data_type()) || is256(b.data_type());
        if !wide {
            let quotient = ScaledQuotient::new(e);
            let (a, b) = (
                a.as_primitive::<Decimal128Type>(),
                b.as_primitive::<Decimal128Type>(),
            );
            let q: Decimal128Array = arrow::compute::kernels::arity::try_binary(a, b, |x, d| {
                if d == 0 {
                    return Err(arrow::error::ArrowError::ComputeError(
                        "division by zero".into(),
                    ));
                }
                quotient.of(x, d).ok_or_else(|| {
                    arrow::error::ArrowError::ComputeError(format!(
                        "numeric value out of range: a quotient does not fit decimal(38, {scale}) \
                         (lower MEDALLION_NUMERIC_SCALE or cast to a narrower numeric)"
                    ))
                })
            })?;
            return Ok(ColumnarValue::Array(Arc::new(
                q.with_precision_and_scale(38, scale)?,
            )));
        }
        // An operand is 256-bit (a sum or an average): 256 bits throughout.
        let factor = pow10(e);
        let limit = pow10(76);
        let (a, b) = (values_i256(a)?, values_i256(b)?);
        let out_of_range = || {
            exec_err!(
                "numeric value out of range: a quotient does not fit decimal(76, {scale}) (lower MEDALLION_NUMERIC_SCALE or cast to a narrower numeric)"
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
        let array: ArrayRef =
            Arc::new(Decimal256Array::from(out).with_precision_and_scale(76, scale)?);
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
            if wide_product(&l, &r).is_none() {
                return Ok(PlannerResult::Original(expr));
            }
            let mul = ScalarUDF::new_from_impl(NumericMul::default());
            return Ok(PlannerResult::Planned(
                mul.call(vec![expr.left, expr.right]),
            ));
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

    /// The exact division by 10^k agrees with `%` and `/` for every k a
    /// scale can drop, on multiples, near-multiples, signs and the ends of
    /// the range.
    #[test]
    fn exact_division_by_a_power_of_ten_agrees_with_remainder_and_quotient() {
        let mut values = vec![
            0,
            1,
            -1,
            7,
            i128::MAX,
            i128::MIN,
            i128::MIN + 1,
            i128::MAX - 1,
        ];
        let mut x: u128 = 0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C834;
        for k in 0..=38u32 {
            let p = 10i128.pow(k);
            for m in [1i128, 3, 12_345, 999_999_937, i128::MAX / p] {
                let Some(mp) = m.checked_mul(p) else {
                    continue;
                };
                for v in [
                    mp,
                    -mp,
                    mp.wrapping_add(1),
                    mp - 1,
                    mp.wrapping_add(p / 2),
                    mp.wrapping_add(5),
                ] {
                    values.push(v);
                }
            }
        }
        for _ in 0..20_000 {
            // xorshift: values of every size, half of them made multiples.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = (x >> (x % 100)) as i128;
            values.push(v);
            values.push(-v);
            values.push(v / 10i128.pow((x % 39) as u32) * 10i128.pow((x % 39) as u32));
        }
        let mut exact = 0;
        for k in 0..=38u32 {
            let d = ExactPow10::new(k);
            let p = 10i128.pow(k);
            for &v in &values {
                let expected = (v % p == 0).then(|| v / p);
                assert_eq!(d.divide(v), expected, "{v} / 10^{k}");
                exact += usize::from(expected.is_some() && k > 0);
            }
        }
        assert!(exact > 10_000, "too few exact cases: {exact}");
    }

    #[test]
    fn products_are_exact_on_the_fast_path_and_rounded_on_the_wide_one() {
        // Scale 24 × scale 24 → 24: 24 decimals dropped.
        let p = ScaledProduct::new(24);
        let at24 = |units: i128, decimals: u32| units * 10i128.pow(24 - decimals);
        // 1234.56 × 3.5 = 4320.96: both operands have trailing zeros.
        assert_eq!(p.of(at24(123456, 2), at24(35, 1)), Some(at24(432096, 2)));
        assert_eq!(p.of(at24(-123456, 2), at24(35, 1)), Some(at24(-432096, 2)));
        // One operand with all 24 decimals used, the other an integer.
        let third = 333_333_333_333_333_333_333_333i128; // 0.333… (24 digits)
        assert_eq!(
            p.of(third, at24(3, 0)),
            Some(999_999_999_999_999_999_999_999)
        );
        // Neither operand has 12 zero digits: the 256-bit path, rounded half
        // away from zero at the 25th decimal (0.333…3 × 0.5 = 0.1666…65).
        assert_eq!(
            p.of(third, at24(5, 1)),
            Some(166_666_666_666_666_666_666_667)
        );
        assert_eq!(
            p.of(-third, at24(5, 1)),
            Some(-166_666_666_666_666_666_666_667)
        );
        assert_eq!(p.of(third, third), Some(111_111_111_111_111_111_111_111));
        // The same values either way: the fast path agrees with 256 bits.
        for (a, b) in [
            (at24(7, 0), at24(-13, 3)),
            (at24(99_999, 2), at24(12_345, 4)),
        ] {
            let wide = div_round(
                i256::from_i128(a).wrapping_mul(i256::from_i128(b)),
                pow10(24),
            )
            .to_i128();
            assert_eq!(p.of(a, b), wide);
        }
        // 10^7 × 10^7 = 10^14 fits 38 - 24 = 14 integer digits only below 10^14.
        assert_eq!(p.of(at24(10_000_000, 0), at24(10_000_000, 0)), None);
        assert!(p.of(at24(9_999_999, 0), at24(10_000_000, 0)).is_some());
        // Out of range on the wide path too.
        assert_eq!(p.of(i128::MAX / 10, i128::MAX / 10), None);
        // Scales 24 × 2 → 24: two decimals dropped, from either operand.
        let p = ScaledProduct::new(2);
        assert_eq!(p.of(third, 150), Some(500_000_000_000_000_000_000_000)); // × 1.50, rounded
        assert_eq!(p.of(at24(1, 0), 155), Some(at24(155, 2))); // 1 × 1.55, exact
        assert_eq!(p.of(third, 155), Some(516_666_666_666_666_666_666_666)); // × 1.55, rounded
    }

    #[test]
    fn quotients_agree_with_256_bits_on_every_path() {
        let at24 = |units: i128, decimals: u32| units * 10i128.pow(24 - decimals);
        let wide = |x: i128, d: i128, e: u32| {
            div_round(
                i256::from_i128(x).wrapping_mul(pow10(e)),
                i256::from_i128(d),
            )
            .to_i128()
        };
        // Scale 24 / scale 24: 10^24 to cancel. Divisors: an integer (all
        // zeros strip: the fast path without scaling), money (12 strip),
        // a 24-digit value (none strip: 256 bits).
        let q = ScaledQuotient::new(24);
        let third = 333_333_333_333_333_333_333_333i128;
        let cases = [
            (at24(2, 0), at24(3, 0)),
            (at24(-2, 0), at24(3, 0)),
            (at24(2, 0), at24(-3, 0)),
            (at24(123_456, 2), at24(100, 0)),
            (at24(1, 0), at24(-7, 1)),
            (at24(98_765_432, 3), at24(123_456, 2)),
            (at24(5, 1), third),
            (third, third),
            (at24(99_999_999_999_999, 0), at24(3, 0)),
        ];
        for (x, d) in cases {
            assert_eq!(q.of(x, d), wide(x, d, 24), "{x} / {d}");
        }
        assert_eq!(
            q.of(at24(2, 0), at24(3, 0)),
            Some(666_666_666_666_666_666_666_667)
        );
        assert_eq!(q.of(at24(-1, 0), at24(8, 0)), Some(-at24(125, 3)));
        // Out of range: 10^13 / 10^-3 = 10^16 has more than 14 integer digits.
        assert_eq!(q.of(at24(10_000_000_000_000, 0), at24(1, 3)), None);
        // Scale 24 / integer (`x / 100`, the integer as decimal(20, 0)):
        // nothing to cancel, 128 bits.
        let q = ScaledQuotient::new(0);
        assert_eq!(q.of(at24(12_345, 2), 100), Some(at24(12_345, 4)));
        assert_eq!(q.of(third, 2), Some(166_666_666_666_666_666_666_667));
        assert_eq!(q.of(-third, 2), Some(-166_666_666_666_666_666_666_667));
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
