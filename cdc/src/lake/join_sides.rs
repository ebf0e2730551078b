//! Hash joins build their table from the smaller side, a join's output
//! being estimated as its larger input.
//!
//! ```text
//!   HashJoin(build = l ⋈ m ≈ 1.1M, probe = 6)   ──►   HashJoin(build = 6, probe = l ⋈ m)
//!   (JoinSelection took l ⋈ m for 6 rows)              (this rule, right after JoinSelection)
//! ```
//!
//! DataFusion's `JoinSelection` swaps a hash join's inputs on their
//! estimated sizes, and it estimates the output of an equi-join without
//! column statistics (Delta's file statistics give none it can use) as the
//! smaller input: journal items (1.1M rows) ⋈ journals (6) was taken for 6
//! rows. A model's joins chain (journal items ⋈ moves ⋈ journals ⋈
//! accounts ⋈ partners), so every join after the first built its hash
//! table from the million joined rows and probed it with the six accounts
//! or the partners: the build side's columns were gathered into one batch
//! (250 MB for the general ledger) and every output row was copied out of
//! it again.
//!
//! This rule estimates a join's output as its larger input (a join on a
//! key keeps about the rows of the side holding the reference) and the
//! operators above a join that keep or drop rows (projection, filter,
//! repartition, coalescing, sort) as their input; elsewhere it takes
//! DataFusion's figure. A join whose right input is estimated smaller than
//! its left, and small enough to collect whole (DataFusion's
//! `hash_join_single_partition_threshold_rows`), is swapped so the right
//! builds. A wrong guess costs a hash table of at most that many rows.

use std::sync::Arc;

use deltalake::datafusion::common::config::ConfigOptions;
use deltalake::datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use deltalake::datafusion::error::Result;
use deltalake::datafusion::physical_optimizer::PhysicalOptimizerRule;
use deltalake::datafusion::physical_plan::ExecutionPlan;
use deltalake::datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use deltalake::datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};

/// The rule (see the module's doc).
#[derive(Debug, Default)]
pub(super) struct SmallSideBuilds;

impl SmallSideBuilds {
    /// DataFusion's default rules with this one right after
    /// `JoinSelection` (before the rules that add dynamic filters, after
    /// which a join's inputs may no longer be swapped).
    pub(super) fn with_default_rules() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
        let mut rules =
            deltalake::datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
        let at = rules
            .iter()
            .position(|r| r.name() == "join_selection")
            .map_or(rules.len(), |i| i + 1);
        rules.insert(at, Arc::new(SmallSideBuilds));
        rules
    }
}

/// The rows `plan` yields, as this rule estimates them (see the module's
/// doc); `None`: unknown.
fn estimated_rows(plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
    use deltalake::datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
    use deltalake::datafusion::physical_plan::filter::FilterExec;
    use deltalake::datafusion::physical_plan::joins::{
        CrossJoinExec, NestedLoopJoinExec, SortMergeJoinExec, SymmetricHashJoinExec,
    };
    use deltalake::datafusion::physical_plan::projection::ProjectionExec;
    use deltalake::datafusion::physical_plan::repartition::RepartitionExec;
    use deltalake::datafusion::physical_plan::sorts::sort::SortExec;
    let children = plan.children();
    let is_join = plan.downcast_ref::<HashJoinExec>().is_some()
        || plan.downcast_ref::<SortMergeJoinExec>().is_some()
        || plan.downcast_ref::<NestedLoopJoinExec>().is_some()
        || plan.downcast_ref::<SymmetricHashJoinExec>().is_some()
        || plan.downcast_ref::<CrossJoinExec>().is_some();
    if is_join {
        return children
            .iter()
            .map(|c| estimated_rows(c))
            .try_fold(0usize, |most, rows| rows.map(|r| most.max(r)));
    }
    let passes_rows = plan.downcast_ref::<ProjectionExec>().is_some()
        || plan.downcast_ref::<FilterExec>().is_some()
        || plan.downcast_ref::<RepartitionExec>().is_some()
        || plan.downcast_ref::<CoalescePartitionsExec>().is_some()
        || plan.downcast_ref::<SortExec>().is_some();
    if passes_rows && let [child] = children.as_slice() {
        return estimated_rows(child);
    }
    StatisticsContext::new()
        .compute(plan.as_ref(), &StatisticsArgs::new())
        .ok()
        .and_then(|s| s.num_rows.get_value().copied())
}

impl PhysicalOptimizerRule for SmallSideBuilds {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !config.optimizer.join_reordering {
            return Ok(plan);
        }
        let small = config.optimizer.hash_join_single_partition_threshold_rows;
        plan.transform_up(|plan| {
            let Some(join) = plan.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(plan));
            };
            // A null-aware anti join (`NOT IN`) keeps its sides: its
            // NULL handling depends on which side builds (as DataFusion's
            // own selection keeps it).
            let swap = join.join_type().supports_swap()
                && !join.null_aware
                && matches!(
                    join.partition_mode(),
                    PartitionMode::CollectLeft | PartitionMode::Partitioned
                )
                && estimated_rows(join.right()).is_some_and(|right| {
                    right <= small && estimated_rows(join.left()).is_none_or(|left| left > right)
                });
            if !swap {
                return Ok(Transformed::no(plan));
            }
            match join.swap_inputs(PartitionMode::CollectLeft) {
                Ok(swapped) => Ok(Transformed::yes(swapped)),
                // A join that cannot be swapped (one with a dynamic filter
                // already) stays as it is.
                Err(_) => Ok(Transformed::no(plan)),
            }
        })
        .data()
    }

    fn name(&self) -> &str {
        "medallion_small_side_builds"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use deltalake::datafusion::datasource::MemTable;
    use deltalake::datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    /// `name(id, <refs>…, label)` with `rows` rows; reference `r` of row
    /// `i` is `i % modulo`.
    fn table(ctx: &SessionContext, name: &str, rows: i64, refs: &[(&str, i64)]) {
        let mut fields = vec![Field::new("id", DataType::Int64, false)];
        let mut columns: Vec<arrow::array::ArrayRef> =
            vec![Arc::new(Int64Array::from_iter_values(0..rows))];
        for (r, modulo) in refs {
            fields.push(Field::new(*r, DataType::Int64, false));
            columns.push(Arc::new(Int64Array::from_iter_values(
                (0..rows).map(|i| i % modulo),
            )));
        }
        fields.push(Field::new("label", DataType::Utf8, false));
        columns.push(Arc::new(StringArray::from_iter_values(
            (0..rows).map(|i| format!("{name}{i}")),
        )));
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
        // Two partitions, as the lake's scans have on two cores.
        let half = batch.num_rows() / 2;
        let parts = vec![
            vec![batch.slice(0, half)],
            vec![batch.slice(half, batch.num_rows() - half)],
        ];
        ctx.register_table(
            name,
            Arc::new(MemTable::try_new(schema, parts).expect("table")),
        )
        .expect("register");
    }

    /// The general ledger's shape: lines ⋈ moves ⋈ journals ⋈ accounts ⟕ partners.
    const LEDGER: &str = "SELECT l.id, m.label AS move, j.label AS journal, a.label AS account, p.label AS partner \
                          FROM l JOIN m ON m.id = l.m_id JOIN j ON j.id = l.j_id JOIN a ON a.id = l.a_id \
                          LEFT JOIN p ON p.id = l.p_id WHERE l.label <> 'l7' ORDER BY l.id";

    fn books(ctx: &SessionContext) {
        table(
            ctx,
            "l",
            20_000,
            &[("m_id", 5_000), ("j_id", 6), ("a_id", 6), ("p_id", 300)],
        );
        table(ctx, "m", 5_000, &[]);
        table(ctx, "j", 6, &[]);
        table(ctx, "a", 6, &[]);
        table(ctx, "p", 200, &[]); // lines of partners 200..299 have none
    }

    /// (estimated rows of the build side, of the probe side) of each hash join.
    async fn join_sides(ctx: &SessionContext) -> Vec<(usize, usize)> {
        let plan = ctx
            .sql(LEDGER)
            .await
            .expect("plan")
            .create_physical_plan()
            .await
            .expect("physical plan");
        let mut sides = Vec::new();
        plan.apply(|p| {
            if let Some(j) = p.downcast_ref::<HashJoinExec>() {
                sides.push((
                    estimated_rows(j.left()).expect("build rows"),
                    estimated_rows(j.right()).expect("probe rows"),
                ));
            }
            Ok(deltalake::datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .expect("walk");
        sides
    }

    /// `NOT IN` is a null-aware anti join, which keeps its sides: a line
    /// whose account is NULL is not "not in" the accounts (SQL's NULL), and
    /// a subquery holding a NULL makes `NOT IN` false for every row.
    #[tokio::test]
    async fn a_not_in_subquery_keeps_its_sql_null_semantics() {
        let ctx = crate::lake::session();
        books(&ctx);
        ctx.sql("CREATE TABLE n (v BIGINT) AS VALUES (1), (2), (NULL)")
            .await
            .expect("create")
            .collect()
            .await
            .expect("create");
        ctx.sql("CREATE TABLE k (v BIGINT) AS VALUES (1), (2)")
            .await
            .expect("create")
            .collect()
            .await
            .expect("create");
        let count = |sql: &'static str| {
            let ctx = &ctx;
            async move {
                let b = crate::lake::collect(ctx, sql).await.expect("run");
                crate::expectations::count_of(&b).expect("count")
            }
        };
        // a_id is i % 6: 0, 3, 4, 5 are not in {1, 2}.
        assert_eq!(
            count("SELECT count(*) FROM l WHERE a_id NOT IN (SELECT v FROM k)").await,
            20_000 / 6 * 4 + 1
        );
        assert_eq!(
            count("SELECT count(*) FROM l WHERE a_id NOT IN (SELECT v FROM n)").await,
            0
        );
    }

    #[tokio::test]
    async fn every_join_of_a_chain_builds_from_its_smaller_side_and_the_rows_stay_the_same() {
        let ours = crate::lake::session();
        books(&ours);
        let sides = join_sides(&ours).await;
        assert_eq!(sides.len(), 4, "{sides:?}");
        assert!(
            sides.iter().all(|(build, probe)| build <= probe),
            "a join builds from its larger side: {sides:?}"
        );
        for small in [6, 200] {
            assert!(
                sides.iter().any(|(build, _)| *build == small),
                "no join builds from the {small}-row table: {sides:?}"
            );
        }
        // DataFusion's rules alone build from the joined lines (estimated,
        // wrongly, at the size of the smallest table joined so far).
        let plain = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
        books(&plain);
        let theirs = join_sides(&plain).await;
        assert!(
            theirs.iter().any(|(build, probe)| build > probe),
            "the case this rule is for did not arise: {theirs:?}"
        );
        // Same rows either way (the left join's partnerless lines included).
        let rows = |ctx: SessionContext| async move {
            let batches = ctx
                .sql(LEDGER)
                .await
                .expect("plan")
                .collect()
                .await
                .expect("run");
            arrow::util::pretty::pretty_format_batches(&batches)
                .expect("format")
                .to_string()
        };
        let (a, b) = (rows(ours).await, rows(plain).await);
        assert_eq!(
            a.lines().count(),
            20_000 - 1 + 4,
            "rows (and the table's frame)"
        );
        assert_eq!(a, b);
        let ctx = crate::lake::session();
        books(&ctx);
        let sql = format!(
            "SELECT count(*) FROM ({}) x WHERE partner IS NULL",
            LEDGER.replace(" ORDER BY l.id", "")
        );
        let partnerless = crate::lake::collect(&ctx, &sql).await.expect("count");
        // The lines of partners 200..299 (i % 300 in 200..299 of 20,000).
        assert_eq!(
            crate::expectations::count_of(&partnerless).expect("count"),
            6_600
        );
    }
}
