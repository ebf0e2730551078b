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
//!
//! `sum` of a 128-bit decimal (every stored `numeric`) does not widen the
//! argument itself: casting each value to 256 bits before adding it was
//! most of the cost of a grouped sum. Its groups accumulator
//! ([`WideSumGroups`]) and its accumulator without a `GROUP BY` or over a
//! window frame ([`WideSum`]) add the 128-bit values straight into 256-bit
//! totals, which is as exact; `DISTINCT` is DataFusion's over 256-bit
//! values, each batch cast as it arrives ([`CastToWide`]). `avg` widens
//! its argument.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, PrimitiveArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Decimal128Type, Decimal256Type, Field, FieldRef, i256};
use datafusion_functions_aggregate_common::aggregate::groups_accumulator::accumulate::NullState;
use deltalake::datafusion::common::{Result as DfResult, ScalarValue};
use deltalake::datafusion::functions_aggregate::average::Avg;
use deltalake::datafusion::functions_aggregate::sum::Sum;
use deltalake::datafusion::logical_expr::EmitTo;
use deltalake::datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use deltalake::datafusion::logical_expr::type_coercion::functions::fields_with_udf;
use deltalake::datafusion::logical_expr::utils::AggregateOrderSensitivity;
use deltalake::datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, GroupsAccumulator, ReversedUDAF, SetMonotonicity,
    Signature, Volatility,
};

/// `sum` and `avg` with decimal arguments summed in 256 bits.
pub(super) fn udafs() -> [AggregateUDF; 2] {
    [
        AggregateUDF::new_from_impl(WideDecimal::new(
            AggregateUDF::new_from_impl(Sum::new()),
            Widen::Totals,
        )),
        AggregateUDF::new_from_impl(WideDecimal::new(
            AggregateUDF::new_from_impl(Avg::new()),
            Widen::Argument,
        )),
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

/// Where the 256 bits come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Widen {
    /// The argument is cast before the aggregate sees it (`avg`).
    Argument,
    /// A 128-bit decimal argument stays as it is and the totals are 256
    /// bits (`sum`); narrower decimals are taken as 128 bits first.
    Totals,
}

/// An aggregate whose decimal argument is summed in 256 bits, by
/// DataFusion's own implementation (`inner`) or, for grouped `sum`s of
/// 128-bit values, by [`WideSumGroups`]; everything else is `inner`'s.
#[derive(Debug, PartialEq, Eq, Hash)]
struct WideDecimal {
    inner: AggregateUDF,
    widen: Widen,
    signature: Signature,
}

impl WideDecimal {
    fn new(inner: AggregateUDF, widen: Widen) -> Self {
        WideDecimal {
            inner,
            widen,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    fn of(&self) -> &Arc<dyn AggregateUDFImpl> {
        self.inner.inner()
    }

    /// The 256-bit type a 128-bit decimal argument is totalled in, when
    /// this aggregate keeps such an argument as it is.
    fn totals_of(&self, arg: &DataType) -> Option<DataType> {
        match (self.widen, arg) {
            (Widen::Totals, DataType::Decimal128(_, s)) => Some(DataType::Decimal256(76, *s)),
            _ => None,
        }
    }

    /// `fields` as `inner` sees them: a kept 128-bit argument as 256 bits.
    fn inner_fields(&self, fields: &[FieldRef]) -> Vec<FieldRef> {
        fields
            .iter()
            .map(|f| match self.totals_of(f.data_type()) {
                Some(t) => Arc::new(f.as_ref().clone().with_data_type(t)),
                None => f.clone(),
            })
            .collect()
    }

    /// The 256-bit type of the totals when `args`' argument is kept as a
    /// 128-bit decimal.
    fn kept(&self, args: &AccumulatorArgs) -> Option<DataType> {
        match args.expr_fields {
            [f] => self.totals_of(f.data_type()),
            _ => None,
        }
    }

    /// The accumulator for a kept 128-bit argument: [`WideSum`] (no
    /// `GROUP BY`, window frames: a window calls it row by row, where a
    /// cast per call would cost an array per row), or for `DISTINCT`
    /// DataFusion's (`inner`) over each batch cast to 256 bits. Any other
    /// argument: `inner` as it is.
    fn kept_accumulator(
        &self,
        args: AccumulatorArgs,
        inner: impl FnOnce(AccumulatorArgs) -> DfResult<Box<dyn Accumulator>>,
    ) -> DfResult<Box<dyn Accumulator>> {
        match self.kept(&args) {
            Some(to) if !args.is_distinct => Ok(Box::new(WideSum::new(to))),
            Some(to) => Ok(Box::new(CastToWide {
                inner: inner(args)?,
                to,
            })),
            None => inner(args),
        }
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
            [
                DataType::Decimal32(_, s) | DataType::Decimal64(_, s) | DataType::Decimal128(_, s),
            ] if self.widen == Widen::Totals => Ok(vec![DataType::Decimal128(38, *s)]),
            [t @ DataType::Decimal256(..)] if self.widen == Widen::Totals => Ok(vec![t.clone()]),
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
        match arg_types.first().and_then(|t| self.totals_of(t)) {
            Some(totals) if arg_types.len() == 1 => Ok(totals),
            _ => self.of().return_type(arg_types),
        }
    }

    fn return_field(&self, arg_fields: &[FieldRef]) -> DfResult<FieldRef> {
        self.of().return_field(&self.inner_fields(arg_fields))
    }

    fn is_nullable(&self) -> bool {
        self.of().is_nullable()
    }

    fn accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        self.kept_accumulator(args, |a| self.of().accumulator(a))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        let input_fields = self.inner_fields(args.input_fields);
        self.of().state_fields(StateFieldsArgs {
            input_fields: &input_fields,
            ..args
        })
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.of().groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> DfResult<Box<dyn GroupsAccumulator>> {
        match self.kept(&args) {
            Some(to) => Ok(Box::new(WideSumGroups::new(to))),
            None => self.of().create_groups_accumulator(args),
        }
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        self.kept_accumulator(args, |a| self.of().create_sliding_accumulator(a))
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

/// `sum` of 128-bit decimals into one 256-bit total, without a `GROUP BY`
/// or over a window frame (values leaving the frame are retracted). The
/// total is `NULL` while no non-null value is in it. Its partial state is
/// the total, as DataFusion's `sum` declares it.
#[derive(Debug)]
struct WideSum {
    total: i256,
    /// Non-null values (or non-null partial totals) in the total.
    count: u64,
    /// `Decimal256(76, s)`.
    data_type: DataType,
}

impl WideSum {
    fn new(data_type: DataType) -> Self {
        WideSum {
            total: i256::ZERO,
            count: 0,
            data_type,
        }
    }
}

impl Accumulator for WideSum {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let [values] = values else {
            return deltalake::datafusion::common::internal_err!("sum takes one argument");
        };
        for v in values.as_primitive::<Decimal128Type>().iter().flatten() {
            self.total = self.total.wrapping_add(i256::from_i128(v));
            self.count += 1;
        }
        Ok(())
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let [values] = values else {
            return deltalake::datafusion::common::internal_err!("sum takes one argument");
        };
        for v in values.as_primitive::<Decimal128Type>().iter().flatten() {
            self.total = self.total.wrapping_sub(i256::from_i128(v));
            self.count -= 1;
        }
        Ok(())
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let [partials] = states else {
            return deltalake::datafusion::common::internal_err!("sum has one state");
        };
        for v in partials.as_primitive::<Decimal256Type>().iter().flatten() {
            self.total = self.total.wrapping_add(v);
            self.count += 1;
        }
        Ok(())
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        ScalarValue::new_primitive::<Decimal256Type>(
            (self.count > 0).then_some(self.total),
            &self.data_type,
        )
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn size(&self) -> usize {
        size_of::<Self>()
    }
}

/// DataFusion's `sum(DISTINCT …)` over 256-bit values, fed 128-bit input:
/// each batch of input (not of partial states, which are already 256
/// bits) is cast as it arrives.
#[derive(Debug)]
struct CastToWide {
    inner: Box<dyn Accumulator>,
    to: DataType,
}

impl CastToWide {
    fn cast(&self, values: &[ArrayRef]) -> DfResult<Vec<ArrayRef>> {
        values
            .iter()
            .map(|v| Ok(arrow::compute::cast(v, &self.to)?))
            .collect()
    }
}

impl Accumulator for CastToWide {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let values = self.cast(values)?;
        self.inner.update_batch(&values)
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        self.inner.evaluate()
    }

    fn size(&self) -> usize {
        self.inner.size() + size_of::<Self>()
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        self.inner.state()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        self.inner.merge_batch(states)
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let values = self.cast(values)?;
        self.inner.retract_batch(&values)
    }

    fn supports_retract_batch(&self) -> bool {
        self.inner.supports_retract_batch()
    }
}

/// Grouped `sum` of 128-bit decimals into 256-bit totals, one per group: a
/// total is `NULL` until the group has seen a non-null value, as in
/// Postgres. Partial states are the 256-bit totals.
#[derive(Debug)]
struct WideSumGroups {
    totals: Vec<i256>,
    seen: NullState,
    /// `Decimal256(76, s)`.
    data_type: DataType,
}

impl WideSumGroups {
    fn new(data_type: DataType) -> Self {
        WideSumGroups {
            totals: Vec::new(),
            seen: NullState::new(),
            data_type,
        }
    }
}

impl GroupsAccumulator for WideSumGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        let [values] = values else {
            return deltalake::datafusion::common::internal_err!("sum takes one argument");
        };
        let values = values.as_primitive::<Decimal128Type>();
        self.totals.resize(total_num_groups, i256::ZERO);
        let totals = &mut self.totals;
        self.seen.accumulate(
            group_indices,
            values,
            opt_filter,
            total_num_groups,
            |g, v| totals[g] = totals[g].wrapping_add(i256::from_i128(v)),
        );
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        let totals = emit_to.take_needed(&mut self.totals);
        let nulls = self.seen.build(emit_to);
        Ok(Arc::new(
            PrimitiveArray::<Decimal256Type>::new(totals.into(), nulls)
                .with_data_type(self.data_type.clone()),
        ))
    }

    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        Ok(vec![self.evaluate(emit_to)?])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> DfResult<()> {
        let [partials] = values else {
            return deltalake::datafusion::common::internal_err!("sum has one state");
        };
        let partials = partials.as_primitive::<Decimal256Type>();
        self.totals.resize(total_num_groups, i256::ZERO);
        let totals = &mut self.totals;
        self.seen
            .accumulate(group_indices, partials, None, total_num_groups, |g, v| {
                totals[g] = totals[g].wrapping_add(v)
            });
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> DfResult<Vec<ArrayRef>> {
        let [values] = values else {
            return deltalake::datafusion::common::internal_err!("sum takes one argument");
        };
        let values = values.as_primitive::<Decimal128Type>();
        // Each row its own partial total; a row the filter drops is NULL.
        let filtered = opt_filter.map(|f| match f.nulls() {
            Some(n) => NullBuffer::from(f.values() & n.inner()),
            None => NullBuffer::from(f.values().clone()),
        });
        let nulls = NullBuffer::union(values.nulls(), filtered.as_ref());
        let totals: PrimitiveArray<Decimal256Type> = values.unary(i256::from_i128);
        let (_, totals, _) = totals.into_parts();
        Ok(vec![Arc::new(
            PrimitiveArray::<Decimal256Type>::new(totals, nulls)
                .with_data_type(self.data_type.clone()),
        )])
    }

    fn size(&self) -> usize {
        self.totals.capacity() * size_of::<i256>() + self.seen.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_decimals_are_widened() {
        let [sum, avg] = udafs();
        // sum keeps a 128-bit argument and totals it in 256 bits.
        assert_eq!(
            sum.coerce_types(&[DataType::Decimal128(38, 24)]).unwrap(),
            vec![DataType::Decimal128(38, 24)]
        );
        assert_eq!(
            sum.coerce_types(&[DataType::Decimal64(12, 2)]).unwrap(),
            vec![DataType::Decimal128(38, 2)]
        );
        assert_eq!(
            sum.return_type(&[DataType::Decimal128(38, 24)]).unwrap(),
            DataType::Decimal256(76, 24)
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

    /// Every path of `sum` over 128-bit decimals (grouped with partial
    /// states merged across partitions, grouped with the partial step
    /// skipped, ungrouped, `DISTINCT`, `FILTER`, window frames) gives what
    /// DataFusion's own sum gives over the same values cast to 256 bits,
    /// and totals past 38 digits are exact.
    #[tokio::test]
    async fn every_path_of_a_128_bit_sum_agrees_with_the_256_bit_sum() {
        use arrow::array::{Decimal128Array, Int64Array, RecordBatch};
        use arrow::datatypes::Schema;
        use deltalake::datafusion::datasource::MemTable;
        use deltalake::datafusion::prelude::SessionContext;

        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("g", DataType::Int64, false),
            Field::new("x", DataType::Decimal128(38, 24), true),
        ]));
        // 4 partitions of 3 batches: groups 0..7, values up to 9·10^13 (a
        // group's total passes 38 digits), a NULL every 11th row, group 7
        // all NULL.
        let mut partitions = Vec::new();
        let mut id = 0i64;
        for _ in 0..4 {
            let mut batches = Vec::new();
            for _ in 0..3 {
                let (mut ids, mut gs, mut xs) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..500 {
                    id += 1;
                    let g = id % 8;
                    let x = if g == 7 || id % 11 == 0 {
                        None
                    } else {
                        // -9·10^13 … 9·10^13 with 24 decimals, odd digits.
                        let units = (id * 7_919 % 180_001 - 90_000) as i128;
                        Some(units * 1_000_000_000 * 10i128.pow(24) + id as i128 * 123_456_789)
                    };
                    ids.push(id);
                    gs.push(g);
                    xs.push(x);
                }
                batches.push(
                    RecordBatch::try_new(
                        schema.clone(),
                        vec![
                            Arc::new(Int64Array::from(ids)),
                            Arc::new(Int64Array::from(gs)),
                            Arc::new(
                                Decimal128Array::from(xs)
                                    .with_precision_and_scale(38, 24)
                                    .unwrap(),
                            ),
                        ],
                    )
                    .unwrap(),
                );
            }
            partitions.push(batches);
        }

        async fn rows(ctx: &SessionContext, sql: &str) -> Vec<String> {
            let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
            let mut out = Vec::new();
            for b in &batches {
                let opts = arrow::util::display::FormatOptions::default().with_null("NULL");
                let cols: Vec<_> = b
                    .columns()
                    .iter()
                    .map(|c| arrow::util::display::ArrayFormatter::try_new(c, &opts).unwrap())
                    .collect();
                for i in 0..b.num_rows() {
                    out.push(
                        cols.iter()
                            .map(|c| c.value(i).to_string())
                            .collect::<Vec<_>>()
                            .join("|"),
                    );
                }
            }
            out
        }

        let wide = "CAST(x AS DECIMAL(76, 24))";
        let queries = [
            "SELECT g, sum(X) AS s FROM t GROUP BY g ORDER BY g",
            "SELECT g, sum(X) FILTER (WHERE id % 3 = 0) AS s FROM t GROUP BY g ORDER BY g",
            "SELECT sum(X) AS s FROM t",
            "SELECT sum(X) AS s FROM t WHERE g = 7",
            "SELECT g, sum(DISTINCT X) AS s FROM t GROUP BY g ORDER BY g",
            "SELECT id, sum(X) OVER (PARTITION BY g ORDER BY id) AS s FROM t ORDER BY id",
            "SELECT id, sum(X) OVER (ORDER BY id ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS s \
             FROM t ORDER BY id",
        ];
        for skip_partial in [false, true] {
            let ctx = crate::lake::session();
            if skip_partial {
                // The partial step hands every row on as its own state
                // (`convert_to_state`) from the first batch on.
                for (k, v) in [
                    ("skip_partial_aggregation_probe_rows_threshold", "1"),
                    ("skip_partial_aggregation_probe_ratio_threshold", "0.0"),
                ] {
                    ctx.sql(&format!("SET datafusion.execution.{k} = {v}"))
                        .await
                        .unwrap()
                        .collect()
                        .await
                        .unwrap();
                }
            }
            let table = MemTable::try_new(schema.clone(), partitions.clone()).unwrap();
            ctx.register_table("t", Arc::new(table)).unwrap();
            for q in queries {
                let ours = rows(&ctx, &q.replace('X', "x")).await;
                let theirs = rows(&ctx, &q.replace('X', wide)).await;
                assert!(!ours.is_empty(), "{q}: no rows");
                assert_eq!(ours, theirs, "{q} (skip partial: {skip_partial})");
            }
            // The plan does use the 128-bit input: no cast to 256 bits.
            let plan = rows(&ctx, "EXPLAIN SELECT g, sum(x) FROM t GROUP BY g").await;
            assert!(!plan.join("\n").contains("Decimal256"), "{plan:?}");
        }

        // A group past 38 digits, checked by hand: 2·9·10^13 + …
        let ctx = crate::lake::session();
        let two = MemTable::try_new(
            Arc::new(Schema::new(vec![
                Field::new("g", DataType::Int64, false),
                Field::new("x", DataType::Decimal128(38, 24), true),
            ])),
            vec![vec![
                RecordBatch::try_new(
                    Arc::new(Schema::new(vec![
                        Field::new("g", DataType::Int64, false),
                        Field::new("x", DataType::Decimal128(38, 24), true),
                    ])),
                    vec![
                        Arc::new(Int64Array::from(vec![1, 1, 2])),
                        Arc::new(
                            Decimal128Array::from(vec![
                                Some(90_000_000_000_000 * 10i128.pow(24) + 1),
                                Some(90_000_000_000_000 * 10i128.pow(24)),
                                None,
                            ])
                            .with_precision_and_scale(38, 24)
                            .unwrap(),
                        ),
                    ],
                )
                .unwrap(),
            ]],
        )
        .unwrap();
        ctx.register_table("two", Arc::new(two)).unwrap();
        assert_eq!(
            rows(&ctx, "SELECT g, sum(x) FROM two GROUP BY g ORDER BY g").await,
            vec![
                "1|180000000000000.000000000000000000000001".to_string(),
                "2|NULL".to_string()
            ]
        );
    }
}
