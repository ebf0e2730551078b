//! The gold part of a cycle: every model once, in dependency order, up to
//! `gold_parallelism` of them at a time.
//!
//! ```text
//!  models in dependency order ──► ready: every gold model it reads is computed
//!        │                              (a silver input is ready before gold starts)
//!        ▼
//!  compute tasks (≤ gold_parallelism) ── query, Delta commit ──► its table is an input
//!        │                                                       for the models after it
//!        ▼
//!  publish tasks (≤ gold_parallelism) ── each through a connection of its own
//!        │                                (the cycle's connection when there is one task)
//!        ▼
//!  medallion.runs / table_status, through the cycle's connection
//! ```
//!
//! A model starts as soon as the models it reads are computed: their
//! publication into Postgres runs beside it. Of the models ready, those
//! more models wait for start first (the general ledger before the
//! summaries of other tables). Nothing a model reads is
//! written by a model running beside it, so each model sees exactly what it
//! saw when the models ran one after the other, and each one fails alone as
//! before. A transient error (the lake or Postgres unreachable) stops the
//! cycle; the tasks still running are aborted with it — a Delta commit is
//! atomic and an unfinished publication is rolled back by Postgres.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_postgres::Client;

use crate::Config;
use crate::catalog::{self, GoldDef};
use crate::error::{Error, Result};
use crate::gold::{GoldReport, Input};
use crate::lake::difference::Handover;
use crate::lake::{self, Lake};
use crate::lsn::Lsn;
use crate::status::{self, Layer, ObjectState, TableOutcome};

use super::{
    Refiner, expectations_json, publish_failed, publish_to, published_current, table_error,
};

/// What a finished task hands back to the cycle.
enum Step {
    /// A model's refresh and its table as the cycle leaves it.
    Computed {
        index: usize,
        report: Result<GoldReport>,
        table: Result<Option<deltalake::DeltaTable>>,
        took: Duration,
    },
    /// A model's publication, with the connection it used (kept for the
    /// next one); `Err(None)`: no connection could be opened, so the cycle
    /// publishes it through its own.
    Published {
        index: usize,
        result: std::result::Result<Client, Option<Error>>,
    },
}

/// A model between its refresh and its status record.
struct Refreshed {
    started: chrono::DateTime<chrono::Utc>,
    clock: Instant,
    computed: Duration,
    out: TableOutcome,
    expectations: std::collections::BTreeMap<String, crate::expectations::RuleCount>,
    run: bool,
    /// The table to publish, the watermark it is at, and the difference
    /// its refresh wrote (see [`crate::lake::difference::Handover`]).
    publish: Option<(deltalake::DeltaTable, Lsn, Option<Arc<Handover>>)>,
}

/// Every model of `gold` (in dependency order) refreshed once at `w`, given
/// the silver tables of this cycle in `inputs`; each model's outcome, in
/// `gold`'s order. Models with nothing to record go to `quiet`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn refresh(
    cfg: &Config,
    client: &mut Client,
    lake: &Lake,
    tables: &lake::TableCache,
    gold: &[GoldDef],
    forced: &HashSet<String>,
    w: Lsn,
    inputs: &mut HashMap<String, Input>,
    quiet: &mut Vec<TableOutcome>,
) -> Result<Vec<TableOutcome>> {
    let parallel = cfg.gold_parallelism.max(1);
    let position: HashMap<String, usize> = gold
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("gold.{}", d.name), i))
        .collect();
    let order = start_order(gold, &position);
    // A model is computed once its refresh ended (or it was blocked): the
    // models after it may start.
    let mut computed = vec![false; gold.len()];
    let mut started = vec![false; gold.len()];
    let mut outcomes: Vec<Option<TableOutcome>> = vec![None; gold.len()];
    let mut pending: HashMap<usize, Refreshed> = HashMap::new();
    let mut publications: VecDeque<usize> = VecDeque::new();
    let mut connections: Vec<Client> = Vec::new();
    let mut tasks: JoinSet<Step> = JoinSet::new();
    let mut which: HashMap<tokio::task::Id, usize> = HashMap::new();
    let (mut computing, mut publishing) = (0usize, 0usize);
    let mut clocks: HashMap<usize, (chrono::DateTime<chrono::Utc>, Instant)> = HashMap::new();
    loop {
        // Start, in dependency order, every model whose gold inputs are
        // computed, while there is room.
        for &i in &order {
            let def = &gold[i];
            if computing >= parallel {
                break;
            }
            if started[i]
                || def
                    .upstream
                    .iter()
                    .any(|u| position.get(u).is_some_and(|&j| !computed[j]))
            {
                continue;
            }
            started[i] = true;
            let missing: Vec<&str> = def
                .upstream
                .iter()
                .filter(|u| !inputs.contains_key(*u))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                // Read the last refresh's inputs if they exist but are
                // behind: a model never mixes watermarks.
                let out = TableOutcome {
                    layer: Layer::Gold,
                    name: def.name.clone(),
                    state: ObjectState::Blocked,
                    watermark: None,
                    rows_in: 0,
                    rows_out: 0,
                    version: None,
                    error: Some(format!("waiting for {}", missing.join(", "))),
                };
                quiet.push(out.clone());
                outcomes[i] = Some(out);
                computed[i] = true;
                continue;
            }
            let mine: HashMap<String, Input> = def
                .upstream
                .iter()
                .filter_map(|u| Some((u.clone(), inputs.get(u)?.clone())))
                .collect();
            let (cfg, lake, tables, def) = (cfg.clone(), lake.clone(), tables.clone(), def.clone());
            let force = forced.contains(&format!("gold.{}", def.name));
            clocks.insert(i, (chrono::Utc::now(), Instant::now()));
            let task = tasks.spawn(async move {
                let clock = Instant::now();
                let refiner = Refiner::new(&cfg, &lake, &tables);
                let report = refiner.refresh_gold(&def, &mine, force).await;
                let table = match &report {
                    Err(_) => Ok(None),
                    Ok(_) => match lake.refined_url("gold", &def.name) {
                        Ok(url) => tables.current(&lake, &url).await,
                        Err(e) => Err(e),
                    },
                };
                Step::Computed {
                    index: i,
                    report,
                    table,
                    took: clock.elapsed(),
                }
            });
            which.insert(task.id(), i);
            computing += 1;
        }
        // Publications, while there is room (one at a time through the
        // cycle's own connection when models run one after the other).
        while parallel > 1 && publishing < parallel {
            let Some(i) = publications.pop_front() else {
                break;
            };
            let Some(r) = pending.get(&i) else { continue };
            let Some((table, wm, handover)) = r.publish.clone() else {
                continue;
            };
            let (Some(target), def) = (gold[i].publish.clone(), gold[i].clone()) else {
                continue;
            };
            let keys = target.keys.clone().or(def.keys.clone());
            let url = cfg
                .publish_database_url
                .clone()
                .unwrap_or_else(|| cfg.database_url.clone());
            let kept = connections.pop();
            let task = tasks.spawn(async move {
                let mut other = match kept {
                    Some(c) => c,
                    None => match catalog::connect(&url).await {
                        Ok((c, conn)) => {
                            tokio::spawn(conn);
                            c
                        }
                        Err(e) => {
                            tracing::warn!(gold = %def.name, error = %e,
                                "no connection of its own: publishing through the cycle's (count gold_parallelism in max_connections)");
                            return Step::Published {
                                index: i,
                                result: Err(None),
                            };
                        }
                    },
                };
                let node = format!("gold.{}", def.name);
                let result = publish_to(
                    &mut other,
                    &table,
                    &target,
                    keys.as_deref(),
                    handover.as_deref(),
                    &node,
                    wm,
                )
                .await;
                Step::Published {
                    index: i,
                    result: match result {
                        Ok(()) => Ok(other),
                        Err(e) => Err(Some(e)),
                    },
                }
            });
            which.insert(task.id(), i);
            publishing += 1;
        }
        let Some(joined) = tasks.join_next_with_id().await else {
            break;
        };
        let step = match joined {
            Ok((id, step)) => {
                which.remove(&id);
                step
            }
            Err(e) => {
                // A task that panicked: its model fails alone.
                let index = which.remove(&e.id()).ok_or_else(|| {
                    Error::Protocol(format!("a gold task ended unaccounted for: {e}"))
                })?;
                let error = Error::Model {
                    model: gold[index].name.clone(),
                    message: format!("the refresh stopped unexpectedly: {e}"),
                };
                if pending.contains_key(&index) {
                    Step::Published {
                        index,
                        result: Err(Some(error)),
                    }
                } else {
                    Step::Computed {
                        index,
                        report: Err(error),
                        table: Ok(None),
                        took: Duration::ZERO,
                    }
                }
            }
        };
        match step {
            Step::Computed {
                index,
                mut report,
                table,
                took,
            } => {
                computing -= 1;
                let def = &gold[index];
                let node = format!("gold.{}", def.name);
                let (started, clock) = clocks
                    .remove(&index)
                    .unwrap_or((chrono::Utc::now(), Instant::now()));
                let handover = report.as_mut().ok().and_then(|r| r.handover.take());
                let (out, expectations, run) = outcome(def, report)?;
                let mut refreshed = Refreshed {
                    started,
                    clock,
                    computed: took,
                    out,
                    expectations,
                    run,
                    publish: None,
                };
                if refreshed.out.state != ObjectState::Failed
                    && let Some(t) = table?
                {
                    let wm = refreshed.out.watermark.unwrap_or(w);
                    if let Some(p) = &def.publish
                        && (run
                            || forced.contains(&node)
                            || !published_current(cfg, client, p, &t).await?)
                    {
                        refreshed.publish = Some((t.clone(), wm, handover));
                    }
                    inputs.insert(
                        node,
                        Input {
                            table: t,
                            watermark: wm,
                        },
                    );
                }
                computed[index] = true;
                if refreshed.publish.is_none() {
                    outcomes[index] = Some(finish(cfg, client, w, refreshed, quiet).await?);
                } else if parallel > 1 {
                    pending.insert(index, refreshed);
                    publications.push_back(index);
                } else {
                    if let Some((t, wm, h)) = &refreshed.publish {
                        refreshed.out =
                            publish_here(cfg, client, def, t, *wm, h.as_deref(), refreshed.out)
                                .await?;
                    }
                    outcomes[index] = Some(finish(cfg, client, w, refreshed, quiet).await?);
                }
            }
            Step::Published { index, result } => {
                publishing -= 1;
                let Some(mut refreshed) = pending.remove(&index) else {
                    continue;
                };
                match result {
                    Ok(c) => connections.push(c),
                    Err(Some(e)) => refreshed.out = publish_failed(refreshed.out, e)?,
                    Err(None) => {
                        if let Some((t, wm, h)) = &refreshed.publish {
                            refreshed.out = publish_here(
                                cfg,
                                client,
                                &gold[index],
                                t,
                                *wm,
                                h.as_deref(),
                                refreshed.out,
                            )
                            .await?;
                        }
                    }
                }
                outcomes[index] = Some(finish(cfg, client, w, refreshed, quiet).await?);
            }
        }
    }
    Ok(outcomes.into_iter().flatten().collect())
}

/// The order in which ready models start: the models more models wait for
/// first (a model that others read transitively is on their path), else in
/// dependency order. A model always comes after every model it reads: its
/// readers are a subset of theirs, without itself.
fn start_order(gold: &[GoldDef], position: &HashMap<String, usize>) -> Vec<usize> {
    // `gold` is in dependency order, so each model's upstream models'
    // ancestors are known when it comes.
    let mut ancestors: Vec<HashSet<usize>> = Vec::with_capacity(gold.len());
    for def in gold {
        let mut mine = HashSet::new();
        for &u in def.upstream.iter().filter_map(|u| position.get(u)) {
            if let Some(theirs) = ancestors.get(u) {
                mine.extend(theirs.iter().copied());
            }
            mine.insert(u);
        }
        ancestors.push(mine);
    }
    let mut waiting = vec![0usize; gold.len()];
    for mine in &ancestors {
        for &a in mine {
            waiting[a] += 1;
        }
    }
    let mut order: Vec<usize> = (0..gold.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(waiting[i]), i));
    order
}

/// A model's outcome from its refresh: the status, its expectation counts,
/// and whether it ran (a skipped model records no run).
fn outcome(
    def: &GoldDef,
    report: Result<GoldReport>,
) -> Result<(
    TableOutcome,
    std::collections::BTreeMap<String, crate::expectations::RuleCount>,
    bool,
)> {
    Ok(match report {
        Ok(r) => (
            TableOutcome {
                layer: Layer::Gold,
                name: def.name.clone(),
                state: if r.skipped.is_some() {
                    ObjectState::UpToDate
                } else {
                    ObjectState::Ok
                },
                watermark: Some(r.watermark),
                rows_in: 0,
                rows_out: r.rows_out,
                version: r.version,
                error: None,
            },
            r.expectations,
            r.skipped.is_none(),
        ),
        Err(e) => {
            let message = table_error(e)?;
            tracing::error!(gold = %def.name, error = %message, "gold model stopped");
            (
                TableOutcome::failed(Layer::Gold, &def.name, message),
                Default::default(),
                true,
            )
        }
    })
}

/// Publish through the cycle's connection (or `publish_database_url`).
async fn publish_here(
    cfg: &Config,
    client: &mut Client,
    def: &GoldDef,
    table: &deltalake::DeltaTable,
    wm: Lsn,
    handover: Option<&Handover>,
    out: TableOutcome,
) -> Result<TableOutcome> {
    let Some(p) = &def.publish else {
        return Ok(out);
    };
    let node = format!("gold.{}", def.name);
    match super::publish_one(
        cfg,
        client,
        table,
        p,
        p.keys.as_deref().or(def.keys.as_deref()),
        handover,
        &node,
        wm,
    )
    .await
    {
        Ok(()) => Ok(out),
        Err(e) => publish_failed(out, e),
    }
}

/// Record a model's status (and its run, when it ran) in the cycle at `w`.
async fn finish(
    cfg: &Config,
    client: &mut Client,
    w: Lsn,
    r: Refreshed,
    quiet: &mut Vec<TableOutcome>,
) -> Result<TableOutcome> {
    let mut out = r.out;
    tracing::debug!(gold = %out.name, state = %out.state, computed = ?r.computed,
        total = ?r.clock.elapsed(), "gold run");
    if out.state == ObjectState::UpToDate {
        out.state = ObjectState::Ok;
    }
    if r.run {
        let counts = expectations_json(&r.expectations);
        status::record(client, &cfg.slot, w, &out, r.started, counts, r.run).await?;
    } else {
        quiet.push(out.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str, upstream: &[&str]) -> GoldDef {
        GoldDef {
            name: name.into(),
            query: String::new(),
            refresh: crate::catalog::Refresh::OnChange,
            keys: None,
            upstream: upstream.iter().map(|u| u.to_string()).collect(),
            expectations: Vec::new(),
            publish: None,
        }
    }

    #[test]
    fn the_models_others_wait_for_start_first_and_none_before_what_it_reads() {
        // In dependency order as the catalog gives it: independent models
        // first (z before gl, as it happens), then their readers.
        let gold = vec![
            model("z", &["silver.t"]),
            model("gl", &["silver.aml"]),
            model("by_period", &["gold.gl", "silver.c"]),
            model("ledger", &["gold.gl"]),
            model("trial", &["gold.by_period"]),
            model("history", &["gold.by_period", "gold.gl"]),
        ];
        let position: HashMap<String, usize> = gold
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("gold.{}", d.name), i))
            .collect();
        let order: Vec<&str> = start_order(&gold, &position)
            .into_iter()
            .map(|i| gold[i].name.as_str())
            .collect();
        assert_eq!(
            order,
            ["gl", "by_period", "z", "ledger", "trial", "history"]
        );
        for (at, name) in order.iter().enumerate() {
            let def = gold.iter().find(|d| d.name == *name).unwrap();
            for u in def.upstream.iter().filter_map(|u| u.strip_prefix("gold.")) {
                assert!(order[..at].contains(&u), "{name} before {u}: {order:?}");
            }
        }
    }
}
