//! `medallion-bench api`: latency of the HTTP API under 50 concurrent
//! clients on loopback, against the same queries run by DataFusion in this
//! process (`medallion::lake::query`, which opens the Delta tables and
//! plans the SQL as the API does). Two requests: `GET /v1/gold/{name}`
//! (100 rows in key order) and `POST /v1/query` (an aggregate over the
//! model). The two sides alternate `--rounds` times (so a drift in the
//! machine's load reaches both); prints p50/p99 of each side over all
//! rounds, the API's added share at p99 (target: ≤ 20%), and the spread of
//! the per-round p99 ratios.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{Bench, insert_sql};

const TOKEN: &str = "bench-read-token-0123456789";
const MODEL_SQL: &str = "SELECT l.account_id, date_trunc('month', l.date) AS period, \
     sum(l.debit) AS debit, sum(l.credit) AS credit, sum(l.balance) AS balance, count(*) AS items \
     FROM silver.account_move_line l WHERE l.parent_state = 'posted' \
     GROUP BY l.account_id, date_trunc('month', l.date)";
/// What `GET /v1/gold/gl?limit=100` runs: the model in the order of all its
/// columns (it has no keys), one row more than asked.
const READ_SQL: &str =
    "SELECT * FROM gold.gl ORDER BY account_id, period, debit, credit, balance, items LIMIT 101";
const QUERY_SQL: &str = "SELECT account_id, sum(balance) AS balance, sum(items) AS items \
     FROM gold.gl GROUP BY account_id ORDER BY account_id";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Latencies (seconds, sorted) of `clients` tasks each running `per_client`
/// requests made by `request`.
async fn measure<F, Fut>(clients: usize, per_client: usize, request: F) -> anyhow::Result<Vec<f64>>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let request = Arc::new(request);
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t = Instant::now();
                request().await?;
                took.push(t.elapsed().as_secs_f64());
            }
            anyhow::Ok(took)
        }));
    }
    let mut all = Vec::with_capacity(clients * per_client);
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_by(|a, b| a.total_cmp(b));
    Ok(all)
}

pub(super) fn api(
    rows: u64,
    clients: usize,
    per_client: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(rounds >= 1, "--rounds must be at least 1");
    let b = Bench::new()?;
    b.sql(&insert_sql(1, rows))?;
    b.sql("SELECT medallion.add_source('account_move_line')")?;
    b.sql(&format!(
        "SELECT medallion.define_gold('gl', $q${MODEL_SQL}$q$)"
    ))?;
    b.catch_up()?;
    b.refine(&[])?;
    let model_rows = b.sql(&format!(
        "SELECT count(*) FROM ({}) m",
        MODEL_SQL.replace("silver.", "public.")
    ))?;
    let port = medallion_tests::ports::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = b
        .sidecar(&["serve-api"])
        .env("MEDALLION_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("MEDALLION_API_READ_TOKEN", TOKEN)
        .env("MEDALLION_API_CONCURRENT_QUERIES", clients.to_string())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start medallion serve-api")?;
    let cfg = b.config();
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(clients)
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while http.get(format!("{base}/health")).send().await.is_err() {
            if Instant::now() > deadline {
                bail!("serve-api did not answer /health");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let lake = medallion::lake::Lake::from_config(&cfg)?;
        let scale = cfg.numeric_scale;
        let mut lines = Vec::new();
        for (what, sql, path, body) in [
            ("GET /v1/gold/gl?limit=100", READ_SQL, "/v1/gold/gl?limit=100", None),
            (
                "POST /v1/query (aggregate)",
                QUERY_SQL,
                "/v1/query",
                Some(serde_json::json!({ "sql": QUERY_SQL })),
            ),
        ] {
            let (mut baseline, mut served, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..rounds {
                // In process: the same query, the same table opening.
                let l = lake.clone();
                let b = measure(clients, per_client, move || {
                    let l = l.clone();
                    async move {
                        let batches =
                            medallion::lake::query(&l, &[], &["gl".into()], sql, scale).await?;
                        anyhow::ensure!(batches.iter().map(|b| b.num_rows()).sum::<usize>() > 0);
                        Ok(())
                    }
                })
                .await?;
                let (h, url, body) = (http.clone(), format!("{base}{path}"), body.clone());
                let s = measure(clients, per_client, move || {
                    let (h, url, body) = (h.clone(), url.clone(), body.clone());
                    async move {
                        let req = match &body {
                            Some(b) => h.post(&url).json(b),
                            None => h.get(&url),
                        };
                        let resp = req.bearer_auth(TOKEN).send().await?;
                        anyhow::ensure!(resp.status() == 200, "HTTP {}", resp.status());
                        let v: serde_json::Value = resp.json().await?;
                        anyhow::ensure!(v["row_count"].as_u64().unwrap_or(0) > 0, "no rows: {v}");
                        Ok(())
                    }
                })
                .await?;
                ratios.push(percentile(&s, 0.99) / percentile(&b, 0.99) - 1.0);
                baseline.extend(b);
                served.extend(s);
            }
            baseline.sort_by(|a, b| a.total_cmp(b));
            served.sort_by(|a, b| a.total_cmp(b));
            ratios.sort_by(|a, b| a.total_cmp(b));
            let (b50, b99) = (percentile(&baseline, 0.5), percentile(&baseline, 0.99));
            let (s50, s99) = (percentile(&served, 0.5), percentile(&served, 0.99));
            lines.push(format!(
                "api: {what}, {clients} clients x {per_client} requests x {rounds} rounds, gold.gl {model_rows} rows from {rows} journal items: \
                 in process p50 {:.1} ms p99 {:.1} ms; HTTP API p50 {:.1} ms p99 {:.1} ms; \
                 API adds {:+.0}% at p99 (target <= 20%), {:+.0}% at p50; per-round p99 ratio min {:+.0}% median {:+.0}% max {:+.0}%",
                b50 * 1e3,
                b99 * 1e3,
                s50 * 1e3,
                s99 * 1e3,
                100.0 * (s99 / b99 - 1.0),
                100.0 * (s50 / b50 - 1.0),
                100.0 * ratios[0],
                100.0 * ratios[ratios.len() / 2],
                100.0 * ratios[ratios.len() - 1]
            ));
        }
        anyhow::Ok(lines)
    });
    let _ = server.kill();
    let _ = server.wait();
    for l in result? {
        println!("{l}");
    }
    Ok(())
}
