//! Hash joins build their table from the side known to be small.
//!
//! ```text
//!   HashJoin(build = ?, probe = 6 rows)   ──►   HashJoin(build = 6 rows, probe = ?)
//!   (JoinSelection keeps it: it swaps only                 (this rule, right after
//!    when it knows both sides' sizes)                       JoinSelection)
//! ```
//!
//! DataFusion's `JoinSelection` swaps a hash join's inputs only when it
//! knows the size of both. A model's joins chain (journal items ⋈ moves ⋈
//! journals ⋈ accounts ⋈ partners), and the size of a join's output is
//! unknown, so every join after the first built its hash table from the
//! million joined rows and probed it with the six accounts: the build
//! side's columns were gathered into one batch (250 MB for the general
//! ledger) and every output row was copied out of it again. An input whose
//! size is unknown is taken to be larger than one known to hold at most
//! `hash_join_single_partition_threshold_rows` rows (DataFusion's own bound
//! for collecting a side whole), and the known one builds. The worst case
//! of a wrong guess is a hash table of that many rows.

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

fn known_rows(plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
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
            let swap = join.join_type().supports_swap()
                && matches!(
                    join.partition_mode(),
                    PartitionMode::CollectLeft | PartitionMode::Partitioned
                )
                && known_rows(join.left()).is_none()
                && known_rows(join.right()).is_some_and(|r| r <= small);
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
