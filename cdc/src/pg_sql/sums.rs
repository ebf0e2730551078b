//! `sum` and `avg` of `numeric` that never wrap.
//!
//! DataFusion 55 sums a `decimal(38, s)` in 128 bits and types the result
//! `decimal(38, s)`: a total beyond 38 digits wraps around and gives a
//! wrong value with no error (two rows of 9·10^13 at the default scale sum
//! to −1.6·10^13). Postgres' `sum(numeric)` is exact.
//!
//! Gold replaces `sum` and `avg` with the same functions over the argument
//! widened to `decimal(76, s)` (256 bits: a wrap would need more than 10^38
//! rows of the largest value). The result stays 256-bit through the query;
//! what is stored is brought back to `decimal(38, …)` by a checked cast in
//! `super::stored_types`, so a total that does not fit Delta is an error at
//! refresh, never a wrong number. Other argument types keep DataFusion's
//! coercion and result.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef};
use deltalake::datafusion::common::Result as DfResult;
use deltalake::datafusion::functions_aggregate::average::Avg;
use deltalake::datafusion::functions_aggregate::sum::Sum;
use deltalake::datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use deltalake::datafusion::logical_expr::type_coercion::functions::fields_with_udf;
use deltalake::datafusion::logical_expr::utils::AggregateOrderSensitivity;
use deltalake::datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, GroupsAccumulator, ReversedUDAF, SetMonotonicity,
    Signature, Volatility,
};

/// `sum` and `avg` with decimal arguments widened to 256 bits.
pub(super) fn udafs() -> [AggregateUDF; 2] {
    [
        AggregateUDF::new_from_impl(WideDecimal::new(AggregateUDF::new_from_impl(Sum::new()))),
        AggregateUDF::new_from_impl(WideDecimal::new(AggregateUDF::new_from_impl(Avg::new()))),
    ]
}

/// The type a decimal argument is summed in: 76 digits, its own scale.
fn widened(t: &DataType) -> Option<DataType> {
    match t {
        DataType::Decimal32(_, s) | DataType::Decimal64(_, s) | DataType::Decimal128(_, s) => {
            Some(DataType::Decimal256(76, *s))
        }
        _ => None,
    }
}

/// An aggregate whose decimal argument is widened before DataFusion's own
/// implementation (`inner`) runs; everything else is `inner`'s.
#[derive(Debug, PartialEq, Eq, Hash)]
struct WideDecimal {
    inner: AggregateUDF,
    signature: Signature,
}

impl WideDecimal {
    fn new(inner: AggregateUDF) -> Self {
        WideDecimal {
            inner,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl WideDecimal {
    fn of(&self) -> &Arc<dyn AggregateUDFImpl> {
        self.inner.inner()
    }
}

impl AggregateUDFImpl for WideDecimal {
    fn name(&self) -> &str {
        self.of().name()
    }

    fn aliases(&self) -> &[String] {
        self.of().aliases()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        match arg_types {
            [t] if widened(t).is_some() => Ok(widened(t).into_iter().collect()),
            _ => {
                let fields: Vec<FieldRef> = arg_types
                    .iter()
                    .map(|t| Arc::new(Field::new("arg", t.clone(), true)))
                    .collect();
                Ok(fields_with_udf(&fields, &self.inner)?
                    .iter()
                    .map(|f| f.data_type().clone())
                    .collect())
            }
        }
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.of().return_type(arg_types)
    }

    fn return_field(&self, arg_fields: &[FieldRef]) -> DfResult<FieldRef> {
        self.of().return_field(arg_fields)
    }

    fn is_nullable(&self) -> bool {
        self.of().is_nullable()
    }

    fn accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        self.of().accumulator(args)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        self.of().state_fields(args)
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.of().groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> DfResult<Box<dyn GroupsAccumulator>> {
        self.of().create_groups_accumulator(args)
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        self.of().create_sliding_accumulator(args)
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.of().order_sensitivity()
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        self.of().reverse_expr()
    }

    fn default_value(
        &self,
        data_type: &DataType,
    ) -> DfResult<deltalake::datafusion::common::ScalarValue> {
        self.of().default_value(data_type)
    }

    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.of().set_monotonicity(data_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_decimals_are_widened() {
        let [sum, avg] = udafs();
        assert_eq!(
            sum.coerce_types(&[DataType::Decimal128(38, 24)]).unwrap(),
            vec![DataType::Decimal256(76, 24)]
        );
        assert_eq!(
            sum.return_type(&[DataType::Decimal256(76, 24)]).unwrap(),
            DataType::Decimal256(76, 24)
        );
        assert_eq!(
            sum.coerce_types(&[DataType::Int32]).unwrap(),
            vec![DataType::Int64]
        );
        assert_eq!(
            avg.coerce_types(&[DataType::Decimal128(12, 2)]).unwrap(),
            vec![DataType::Decimal256(76, 2)]
        );
        assert_eq!(
            avg.coerce_types(&[DataType::Float64]).unwrap(),
            vec![DataType::Float64]
        );
    }
}
