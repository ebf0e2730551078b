//! In-memory [`GoldInput`] and [`GoldStore`] for unit tests of a gold
//! refresh: when it recomputes, what it commits, what a failure leaves,
//! without Delta or Postgres. [`MemoryGold`] keeps the rows of its last
//! commit; a keyed MERGE with `when_not_matched_by_source_delete` leaves
//! exactly the source rows, so both writes keep the given rows, and the
//! store notes which write ran.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use deltalake::datafusion::prelude::{DataFrame, SessionContext};

use crate::catalog::GoldDef;
use crate::error::{Error, Result};
use crate::lsn::Lsn;

use super::store::{Commit, GoldInput, GoldStore, Recorded, Rows};

/// A silver or gold table in memory at one version.
pub(super) struct MemoryInput {
    pub rows: RecordBatch,
    pub version: Option<i64>,
    pub watermark: Lsn,
}

#[async_trait]
impl GoldInput for MemoryInput {
    fn version(&self) -> Option<i64> {
        self.version
    }

    fn watermark(&self) -> Lsn {
        self.watermark
    }

    async fn register(&self, ctx: &SessionContext, name: &str) -> Result<()> {
        ctx.register_batch(name, self.rows.clone())
            .map(|_| ())
            .map_err(Error::datafusion("register input"))
    }
}

/// A gold table in memory: the rows and record of its last commit, and
/// the writes made (`"replace"` / `"merge"`).
#[derive(Default)]
pub(super) struct MemoryGold {
    pub rows: Vec<RecordBatch>,
    schema: Option<SchemaRef>,
    recorded: Option<Recorded>,
    pub writes: Vec<&'static str>,
}

impl MemoryGold {
    fn commit(&mut self, def: &GoldDef, rows: Vec<RecordBatch>, schema: SchemaRef, c: Commit) {
        self.rows = rows;
        self.schema = Some(schema);
        self.recorded = Some(Recorded {
            query: Some(c.query),
            inputs: def
                .upstream
                .iter()
                .map(|u| c.inputs.iter().find(|(i, _)| i == u).map(|(_, v)| *v))
                .collect(),
            refreshed_at_ms: Some(c.refreshed_at_ms),
            watermark: Some(c.watermark),
        });
    }

    pub fn recorded_now(&self) -> Option<&Recorded> {
        self.recorded.as_ref()
    }
}

async fn collect(df: DataFrame) -> Result<(Vec<RecordBatch>, SchemaRef)> {
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let rows = df.collect().await.map_err(Error::datafusion("gold rows"))?;
    Ok((rows, schema))
}

#[async_trait]
impl GoldStore for MemoryGold {
    async fn recorded(&self, _def: &GoldDef) -> Result<Option<Recorded>> {
        Ok(self.recorded.clone())
    }

    fn stored_schema(&self) -> Option<SchemaRef> {
        self.schema.clone()
    }

    async fn replace(
        &mut self,
        def: &GoldDef,
        ctx: &SessionContext,
        rows: Rows,
        commit: Commit,
    ) -> Result<()> {
        let (rows, schema) = match rows {
            Rows::Batches(b) => {
                let schema = b.first().map(|b| b.schema());
                let df = ctx
                    .read_batches(b)
                    .map_err(Error::datafusion("gold rows"))?;
                let (rows, plan_schema) = collect(df).await?;
                (rows, schema.unwrap_or(plan_schema))
            }
            Rows::Plan(df) => collect(df).await?,
        };
        self.writes.push("replace");
        self.commit(def, rows, schema, commit);
        Ok(())
    }

    async fn merge_keyed(
        &mut self,
        def: &GoldDef,
        _ctx: &SessionContext,
        source: DataFrame,
        _keys: &[String],
        commit: Commit,
    ) -> Result<Option<u64>> {
        let (rows, _) = collect(source).await?;
        let n = rows.iter().map(|b| b.num_rows() as u64).sum();
        let schema = self
            .schema
            .clone()
            .ok_or_else(|| Error::Protocol(format!("gold.{}: no table to merge into", def.name)))?;
        self.writes.push("merge");
        self.commit(def, rows, schema, commit);
        Ok(Some(n))
    }

    fn version(&self) -> Option<i64> {
        self.recorded.as_ref().map(|_| self.writes.len() as i64 - 1)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use arrow::array::{ArrayRef, Int64Array};
    use arrow::util::pretty::pretty_format_batches;

    use super::super::{GoldReport, Progress, Skip};
    use super::*;
    use crate::catalog::{Expectation, OnViolation, Refresh};
    use crate::lake::{Lake, TableCache};
    use crate::refine::Refiner;

    const NOW: i64 = 1_700_000_000_000;

    /// `silver.t` with ids `1..=n` (v = id) at `version`, reflecting LSN `wm`.
    fn input(n: i64, version: i64, wm: i64) -> HashMap<String, MemoryInput> {
        let rows = RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(Int64Array::from_iter_values(1..=n)) as ArrayRef,
            ),
            (
                "v",
                Arc::new(Int64Array::from_iter_values(1..=n)) as ArrayRef,
            ),
        ])
        .expect("input");
        HashMap::from([(
            "silver.t".to_string(),
            MemoryInput {
                rows,
                version: Some(version),
                watermark: Lsn::from_lake(wm),
            },
        )])
    }

    fn model(query: &str, refresh: Refresh) -> GoldDef {
        GoldDef {
            name: "m".into(),
            query: query.into(),
            refresh,
            keys: None,
            upstream: vec!["silver.t".into()],
            expectations: Vec::new(),
            publish: None,
        }
    }

    const TOTALS: &str = "SELECT count(*) AS n, sum(v) AS s FROM silver.t";

    async fn compute(
        def: &GoldDef,
        inputs: &HashMap<String, MemoryInput>,
        forced: bool,
        now_ms: i64,
        store: &mut MemoryGold,
    ) -> Result<(GoldReport, Progress)> {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = crate::Config {
            lake_url: dir.path().display().to_string(),
            ..crate::Config::default()
        };
        let lake = Lake::from_config(&cfg).expect("lake");
        let tables = TableCache::default();
        let refiner = Refiner::new(&cfg, &lake, &tables);
        refiner.compute(def, inputs, forced, now_ms, store).await
    }

    fn text(store: &MemoryGold) -> String {
        pretty_format_batches(&store.rows)
            .expect("format")
            .to_string()
    }

    #[tokio::test]
    async fn an_on_change_model_recomputes_when_an_input_moves_and_only_then() {
        let def = model(TOTALS, Refresh::OnChange);
        let mut gold = MemoryGold::default();
        let (report, p) = compute(&def, &input(3, 1, 100), false, NOW, &mut gold)
            .await
            .expect("first");
        assert_eq!(p, Progress::Written { counted: false });
        assert!(text(&gold).contains("| 3 | 6 |"), "{}", text(&gold));
        assert_eq!(report.watermark, Lsn::from_lake(100));
        let recorded = gold.recorded_now().expect("recorded").clone();
        assert_eq!(recorded.inputs, vec![Some(1)]);
        assert_eq!(recorded.watermark, Some(Lsn::from_lake(100)));
        assert_eq!(recorded.refreshed_at_ms, Some(NOW));

        let (report, p) = compute(&def, &input(3, 1, 120), false, NOW + 1, &mut gold)
            .await
            .expect("unchanged");
        assert_eq!(p, Progress::Skipped(Skip::UpToDate));
        assert_eq!(report.skipped, Some("up to date"));
        assert_eq!(gold.writes, ["replace"]);

        let (_, p) = compute(&def, &input(4, 2, 130), false, NOW + 2, &mut gold)
            .await
            .expect("moved");
        assert_eq!(p, Progress::Written { counted: false });
        assert!(text(&gold).contains("| 4 | 10 |"), "{}", text(&gold));
        assert_eq!(
            gold.recorded_now().map(|r| r.inputs.clone()),
            Some(vec![Some(2)])
        );
    }

    #[tokio::test]
    async fn manual_and_interval_models_wait_until_forced_or_due() {
        let manual = model(TOTALS, Refresh::Manual);
        let mut gold = MemoryGold::default();
        compute(&manual, &input(3, 1, 100), false, NOW, &mut gold)
            .await
            .expect("first");
        let (report, p) = compute(&manual, &input(4, 2, 130), false, NOW + 5, &mut gold)
            .await
            .expect("moved");
        assert_eq!(p, Progress::Skipped(Skip::Manual));
        // It still reflects what it was computed at, not its inputs' now.
        assert_eq!(report.watermark, Lsn::from_lake(100));
        let (_, p) = compute(&manual, &input(4, 2, 130), true, NOW + 6, &mut gold)
            .await
            .expect("forced");
        assert_eq!(p, Progress::Written { counted: false });
        assert!(text(&gold).contains("| 4 | 10 |"), "{}", text(&gold));

        let every = model(TOTALS, Refresh::Interval(Duration::from_secs(60)));
        let mut gold = MemoryGold::default();
        compute(&every, &input(3, 1, 100), false, NOW, &mut gold)
            .await
            .expect("first");
        let (_, p) = compute(&every, &input(4, 2, 130), false, NOW + 10_000, &mut gold)
            .await
            .expect("not due");
        assert_eq!(p, Progress::Skipped(Skip::NotDue));
        let (_, p) = compute(&every, &input(4, 2, 130), false, NOW + 61_000, &mut gold)
            .await
            .expect("due");
        assert_eq!(p, Progress::Written { counted: false });
        assert_eq!(gold.writes, ["replace", "replace"]);
    }

    #[tokio::test]
    async fn a_failing_expectation_keeps_the_last_good_rows() {
        let mut def = model(TOTALS, Refresh::OnChange);
        def.expectations.push(Expectation {
            name: "at_most_three".into(),
            predicate: "n <= 3".into(),
            on_violation: OnViolation::Fail,
        });
        let mut gold = MemoryGold::default();
        let (report, p) = compute(&def, &input(3, 1, 100), false, NOW, &mut gold)
            .await
            .expect("first");
        assert_eq!(p, Progress::Written { counted: true });
        assert_eq!(report.rows_out, 1);
        let before = (text(&gold), gold.recorded_now().cloned());
        match compute(&def, &input(4, 2, 130), false, NOW + 1, &mut gold).await {
            Err(Error::Expectation { rule, failed, .. }) => {
                assert_eq!((rule.as_str(), failed), ("at_most_three", 1));
            }
            other => panic!("expected the expectation to fail: {:?}", other.map(|r| r.1)),
        }
        assert_eq!((text(&gold), gold.recorded_now().cloned()), before);
        assert_eq!(gold.writes, ["replace"]);
    }

    #[tokio::test]
    async fn a_keyed_model_merges_and_is_rewritten_when_its_types_change() {
        let mut def = model("SELECT id, v FROM silver.t", Refresh::OnChange);
        def.keys = Some(vec!["id".into()]);
        let mut gold = MemoryGold::default();
        compute(&def, &input(3, 1, 100), false, NOW, &mut gold)
            .await
            .expect("first");
        compute(&def, &input(4, 2, 130), false, NOW + 1, &mut gold)
            .await
            .expect("merge");
        assert_eq!(gold.writes, ["replace", "merge"]);
        assert!(text(&gold).contains("| 4  | 4 |"), "{}", text(&gold));

        // v becomes text: the table cannot take it by MERGE.
        def.query = "SELECT id, CAST(v AS text) AS v FROM silver.t".into();
        compute(&def, &input(4, 2, 130), false, NOW + 2, &mut gold)
            .await
            .expect("rewrite");
        assert_eq!(gold.writes, ["replace", "merge", "replace"]);

        // A key the result lacks is the model's error, before any write.
        def.keys = Some(vec!["missing".into()]);
        def.query = "SELECT id, CAST(v AS text) AS v FROM silver.t WHERE id > 1".into();
        let e = compute(&def, &input(4, 2, 130), false, NOW + 3, &mut gold)
            .await
            .expect_err("no such key");
        assert!(e.to_string().contains("key column missing"), "{e}");
        assert_eq!(gold.writes.len(), 3);
    }

    #[tokio::test]
    async fn an_input_missing_this_cycle_fails_the_model_without_a_write() {
        let mut def = model(
            "SELECT count(*) AS n FROM silver.t JOIN silver.u USING (id)",
            Refresh::OnChange,
        );
        def.upstream.push("silver.u".into());
        let mut gold = MemoryGold::default();
        let e = compute(&def, &input(3, 1, 100), false, NOW, &mut gold)
            .await
            .expect_err("silver.u missing");
        assert!(
            matches!(&e, Error::Model { model, message } if model == "m"
                && message.contains("input silver.u is not available")),
            "{e:?}"
        );
        assert!(gold.writes.is_empty());
    }
}
