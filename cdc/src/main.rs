//! `medallion`: the sidecar binary.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use medallion::Config;
use medallion::catalog::Field;
use medallion::replicate::{self, RunOptions};
use tokio_util::sync::CancellationToken;

/// jemalloc: resident memory follows live memory in a long run (see `medallion::heap`).
#[global_allocator]
static ALLOCATOR: medallion::heap::Allocator = medallion::heap::Allocator;

// jemalloc's options: see `medallion::heap::MALLOC_CONF` for what they are and why.
medallion::set_malloc_conf!();

#[derive(Parser)]
#[command(
    name = "medallion",
    version,
    about = "Postgres → Delta Lake lakehouse bridge (sidecar)"
)]
struct Cli {
    /// Optional TOML configuration file (environment variables override it).
    #[arg(long, global = true, env = "MEDALLION_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replicate into the lake until stopped (SIGTERM/Ctrl-C flushes, acknowledges, exits).
    Run {
        /// Drain to the WAL position current at start, then exit 0.
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Run one silver/gold cycle at the slot's confirmed position, then exit.
    Refine {
        /// Also recompute these (`gold.<name>` / `silver.<name>`) whatever their refresh policy.
        #[arg(long = "force")]
        force: Vec<String>,
    },
    /// Serve the HTTP API and the MCP server (`MEDALLION_HTTP_ADDR`) without
    /// replicating, e.g. beside a `medallion run` that has no API.
    ServeApi,
    /// Serve the MCP tools over stdin/stdout, for desktop AI agents.
    Mcp,
    /// Print the HTTP API's OpenAPI document (docs/openapi.json).
    Openapi {
        /// The endpoint table of docs/operate.md instead.
        #[arg(long)]
        markdown: bool,
    },
    /// Run SQL over the lake's silver and gold tables (`silver.<name>`, `gold.<name>`) and print the rows.
    Query {
        /// A query in PostgreSQL syntax, run by DataFusion.
        sql: String,
    },
    /// Validate configuration and connectivity.
    Check,
    /// Exit 0 when the sidecar on this host answers `/health` on its metrics
    /// port (`MEDALLION_METRICS_ADDR`, else the API's `MEDALLION_HTTP_ADDR`);
    /// the container image's healthcheck.
    Health,
    /// Print the status Postgres holds for this sidecar's slot, then a
    /// summary; exits 1 when degraded (an object failed, the slot is missing or lost).
    Status,
    /// Compact small bronze files and vacuum unreferenced files of every layer (safe while `run` runs).
    Optimize {
        /// Target file size in MiB.
        #[arg(long, default_value_t = 128)]
        target_mb: u64,
        /// Keep files a version younger than this references (time travel window).
        #[arg(long, default_value_t = 168)]
        retain_hours: u64,
        /// Compact only.
        #[arg(long)]
        no_vacuum: bool,
    },
}

fn init_logging(format: &str) {
    // delta-rs 1.1 warns on every MERGE that its own scan metrics lack a
    // name ("Missing target skipped-file metric"): noise once per silver
    // refresh, so its merge module logs errors only by default.
    // An empty MEDALLION_LOG (a compose file passing an unset variable on)
    // means the default, not "nothing".
    let filter = std::env::var("MEDALLION_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| {
            tracing_subscriber::EnvFilter::new(
                "info,deltalake=warn,deltalake_core=warn,deltalake_core::operations::merge=error,\
             buoyant_kernel=warn,delta_kernel=warn,pg_walstream=error",
            )
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// One refinement cycle; prints what it did. Fails if a table failed.
async fn refine_once(
    cfg: &Config,
    at: Option<medallion::Lsn>,
    force: &[String],
) -> anyhow::Result<()> {
    let (mut client, conn) = medallion::catalog::connect(&cfg.database_url).await?;
    tokio::spawn(conn);
    if !medallion::catalog::extension_installed(&client).await? {
        return Ok(());
    }
    // One silver/gold writer per slot: not while a `medallion run` refines.
    let _lease = match medallion::lease::Lease::try_acquire(cfg, medallion::lease::LeaseKind::Refine)
        .await
    {
        Err(e @ medallion::Error::LeaseHeld { .. }) => Err(anyhow::Error::new(e).context(
            "a running `medallion run` refines this slot; ask it with SELECT medallion.refresh(...)",
        )),
        other => other.map_err(anyhow::Error::new),
    }?;
    let sealed = medallion::audit::seal(&client)
        .await
        .context("sealing audit records failed")?;
    if sealed > 0 {
        println!("medallion: sealed {sealed} audit records");
    }
    let w = match at {
        Some(w) => w,
        None => {
            let (silver, _) = medallion::catalog::refined_definitions(&client).await?;
            let floor = medallion::refine::refined_floor(cfg, &silver).await?;
            medallion::refine::watermark(&client, &cfg.slot, floor)
                .await?
                .with_context(|| {
                    format!(
                        "replication slot {} does not exist: run `medallion run` first",
                        cfg.slot
                    )
                })?
        }
    };
    let forced = force.iter().cloned().collect();
    let report = medallion::refine::cycle(cfg, &mut client, w, &forced)
        .await
        .context("silver/gold refinement failed")?;
    for t in &report.tables {
        println!(
            "medallion: {}.{} {} rows_out={}{}",
            t.layer,
            t.name,
            t.state,
            t.rows_out,
            t.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
    }
    println!(
        "medallion: silver and gold at source LSN {}",
        report.watermark
    );
    let failed = report.failures();
    if !failed.is_empty() {
        anyhow::bail!(
            "{} table(s) failed: {}",
            failed.len(),
            failed
                .iter()
                .map(|t| format!("{}.{}", t.layer, t.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// A token cancelled on SIGTERM or Ctrl-C.
fn stop_on_signal() -> anyhow::Result<CancellationToken> {
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install the SIGTERM handler")?;
    tokio::spawn(async move {
        let signal = tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        tracing::info!(
            signal,
            "stop requested: finishing the transaction in hand, committing and acknowledging it"
        );
        s.cancel();
    });
    Ok(shutdown)
}

/// Start the HTTP API (`MEDALLION_HTTP_ADDR`) and the metrics-only port
/// (`MEDALLION_METRICS_ADDR`) in the background. A configuration error
/// (a bad token, an address in use) stops the start; a server that ends
/// later is logged.
async fn serve_endpoints(
    cfg: &Config,
    metrics: &Arc<medallion::metrics::Metrics>,
    in_process: bool,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    if let Some(addr) = cfg.metrics_addr.clone() {
        let (m, s) = (metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = medallion::api::serve_metrics(addr, m, s).await {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        });
    }
    if cfg.api.addr.is_some() {
        // Bound before the pipeline starts, so a bad token or an address
        // in use fails `run` at once instead of leaving it without its API.
        let server =
            medallion::api::start(cfg, metrics.clone(), in_process, shutdown.clone()).await?;
        tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "HTTP API stopped");
            }
        });
    }
    Ok(())
}

/// Why the refinement task ended, unless it ended because of the shutdown.
fn refiner_failure(
    ended: Result<medallion::Result<()>, tokio::task::JoinError>,
    shutdown: &CancellationToken,
) -> Option<String> {
    match ended {
        Ok(Ok(())) if shutdown.is_cancelled() => None,
        Ok(Ok(())) => Some("it ended".into()),
        Ok(Err(e)) => Some(e.to_string()),
        Err(e) => Some(format!("it panicked: {e}")),
    }
}

/// `/health` on the host-local side of a listen address: an unspecified
/// host (`0.0.0.0`, `[::]`) is asked on loopback.
fn health_url(addr: &str) -> anyhow::Result<reqwest::Url> {
    let sock: std::net::SocketAddr = addr
        .parse()
        .with_context(|| format!("listen address {addr:?} is not host:port"))?;
    let ip = match sock.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let url = format!(
        "http://{}/health",
        std::net::SocketAddr::new(ip, sock.port())
    );
    Ok(reqwest::Url::parse(&url)?)
}

fn main() -> anyhow::Result<()> {
    forget_blank_object_store_settings();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let done = medallion_main().await;
            // Checkpoints under way finish before the runtime they block on
            // ends (a container's stop grace is 10 s; the rest is given up).
            medallion::lake::settle_upkeep(UPKEEP_AT_EXIT).await;
            done
        })
}

/// How long a process that is ending waits for the Delta log upkeep under
/// way (`lake::settle_upkeep`).
const UPKEEP_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(5);

/// An empty `AWS_*`, `AZURE_*` or `GOOGLE_*` variable counts as unset, as an
/// empty `MEDALLION_*` one does. A compose file passes them through blank
/// when the lake is not on that store, and the object-store layer would take
/// `AWS_ENDPOINT_URL=` for an endpoint and `AWS_REGION=` for a region.
fn forget_blank_object_store_settings() {
    for k in medallion::config::blank_object_store_settings(std::env::vars_os()) {
        // SAFETY: the first thing `main` does, before the runtime or any
        // other thread exists, so nothing reads the environment meanwhile.
        unsafe { std::env::remove_var(k) }
    }
}

async fn medallion_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Openapi { markdown } = cli.command {
        // Needs no configuration: the document is the build's.
        if markdown {
            print!("{}", medallion::api::http::openapi_markdown());
        } else {
            println!("{}", medallion::api::http::openapi_json());
        }
        return Ok(());
    }
    let cfg = Config::load(cli.config.as_deref())?;
    init_logging(&cfg.log_format);
    match cli.command {
        Command::Run { until_caught_up } => {
            tracing::info!(config = %cfg.describe(), "medallion starting");
            if let Some(heap) = medallion::heap::settings() {
                tracing::info!(
                    background_thread = heap.background_thread,
                    dirty_decay_ms = heap.dirty_decay_ms,
                    muzzy_decay_ms = heap.muzzy_decay_ms,
                    "heap: jemalloc purging"
                );
            }
            let metrics = Arc::new(medallion::metrics::Metrics::default());
            let shutdown = stop_on_signal()?;
            serve_endpoints(&cfg, &metrics, true, &shutdown).await?;
            // The refiner wakes on each position the writer acknowledges.
            let acknowledged = replicate::Acknowledged::new();
            let refine = (!until_caught_up && cfg.refine_interval_ms > 0).then(|| {
                let cfg = cfg.clone();
                let shutdown = shutdown.clone();
                let metrics = metrics.clone();
                let acknowledged = acknowledged.clone();
                tokio::spawn(async move {
                    medallion::refine::run_loop(&cfg, shutdown, metrics, Some(acknowledged)).await
                })
            });
            // Bronze's small files are compacted beside the stream.
            let compactor = (!until_caught_up).then(|| {
                let cfg = cfg.clone();
                let shutdown = shutdown.clone();
                let metrics = metrics.clone();
                let acknowledged = acknowledged.clone();
                tokio::spawn(async move {
                    medallion::compactor::run_loop(&cfg, shutdown, metrics, acknowledged).await
                })
            });
            let run = replicate::run(
                &cfg,
                RunOptions {
                    until_caught_up,
                    acknowledged: Some(acknowledged),
                },
                shutdown.clone(),
                metrics,
            );
            let (summary, refine) = match refine {
                None => (run.await, None),
                Some(mut task) => {
                    tokio::pin!(run);
                    tokio::select! {
                        summary = &mut run => (summary, Some(task)),
                        // The refiner only ends early on an error it cannot
                        // retry: say so now and stop, never a silent stall.
                        ended = &mut task => match refiner_failure(ended, &shutdown) {
                            None => (run.await, None),
                            Some(why) => {
                                tracing::error!(error = %why, "silver/gold refinement stopped; stopping medallion");
                                shutdown.cancel();
                                let _ = run.await;
                                anyhow::bail!("silver/gold refinement stopped: {why}");
                            }
                        },
                    }
                }
            };
            if let Some(task) = compactor {
                shutdown.cancel();
                match task.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "bronze compaction stopped"),
                    Err(e) => tracing::warn!(error = %e, "bronze compaction task"),
                }
            }
            let summary = summary.context("medallion run failed")?;
            println!(
                "medallion: {} snapshot rows, {} changes, {} bronze commits, acknowledged {}",
                summary.snapshot_rows, summary.changes, summary.commits, summary.acked_lsn
            );
            if let Some(task) = refine {
                shutdown.cancel();
                task.await
                    .context("refinement task")?
                    .context("silver/gold refinement failed")?;
            } else if until_caught_up && cfg.refine_interval_ms > 0 {
                refine_once(&cfg, Some(summary.acked_lsn), &[]).await?;
            }
        }
        Command::ServeApi => {
            let metrics = Arc::new(medallion::metrics::Metrics::default());
            let shutdown = stop_on_signal()?;
            medallion::api::start(&cfg, metrics, false, shutdown)
                .await?
                .await?;
        }
        Command::Mcp => {
            medallion::api::serve_mcp_stdio(&cfg).await?;
        }
        Command::Openapi { .. } => unreachable!("handled before the configuration is read"),
        Command::Query { sql } => {
            let (client, conn) = medallion::catalog::connect(&cfg.database_url).await?;
            tokio::spawn(conn);
            let (silver, gold) = medallion::catalog::refined_definitions(&client).await?;
            let silver: Vec<String> = silver.into_iter().map(|d| d.name).collect();
            let gold: Vec<String> = gold.into_iter().map(|d| d.name).collect();
            let batches = medallion::lake::query(
                &medallion::lake::Lake::from_config(&cfg)?,
                &silver,
                &gold,
                &sql,
                cfg.numeric_scale,
            )
            .await?;
            println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
        }
        Command::Refine { force } => {
            refine_once(&cfg, None, &force).await?;
        }
        Command::Check => {
            let findings = medallion::check::run(&cfg).await;
            let mut failed = false;
            for f in &findings {
                println!(
                    "{} {:<15} {}",
                    if f.ok { "ok  " } else { "FAIL" },
                    f.name,
                    f.message
                );
                failed |= !f.ok;
            }
            if failed {
                anyhow::bail!("medallion check found problems");
            }
        }
        Command::Optimize {
            target_mb,
            retain_hours,
            no_vacuum,
        } => {
            let reports = medallion::optimize::optimize(
                &cfg,
                medallion::optimize::OptimizeOptions {
                    target_bytes: target_mb << 20,
                    retain_hours,
                    vacuum: !no_vacuum,
                },
            )
            .await?;
            println!(
                "{:<10} {:<48} {:>8} {:>10} {:>8} {:>9}",
                "layer", "table", "files", "compacted", "written", "vacuumed"
            );
            for r in reports {
                println!(
                    "{:<10} {:<48} {:>8} {:>10} {:>8} {:>9}",
                    r.layer,
                    r.table,
                    r.files_before,
                    r.files_compacted,
                    r.files_written,
                    r.files_vacuumed
                );
            }
        }
        Command::Health => {
            let addr = cfg
                .metrics_addr
                .clone()
                .filter(|a| !a.is_empty())
                .or_else(|| cfg.api.addr.clone())
                .context("neither MEDALLION_METRICS_ADDR nor MEDALLION_HTTP_ADDR is set")?;
            let url = health_url(&addr)?;
            let answer = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .build()?
                .get(url.clone())
                .send()
                .await
                .with_context(|| format!("GET {url}"))?;
            anyhow::ensure!(
                answer.status().is_success(),
                "GET {url}: {}",
                answer.status()
            );
            println!("ok");
        }
        Command::Status => {
            let (client, conn) = medallion::catalog::connect(&cfg.database_url).await?;
            tokio::spawn(conn);
            let rows = client
                .query(
                    "SELECT layer, name, state, coalesce(last_lsn::text, ''), rows_total, \
                     coalesce(lag_bytes::text, ''), coalesce(retained_wal_bytes::text, ''), coalesce(last_error, '') \
                     FROM medallion.status() WHERE slot_name = $1",
                    &[&cfg.slot],
                )
                .await
                .context("read medallion.status() (is pg_medallion installed?)")?;
            println!(
                "{:<7} {:<40} {:<12} {:<14} {:>10} {:>10} {:>12}  error",
                "layer", "name", "state", "last_lsn", "rows", "lag_bytes", "retained_wal"
            );
            for r in &rows {
                println!(
                    "{:<7} {:<40} {:<12} {:<14} {:>10} {:>10} {:>12}  {}",
                    r.field::<String>(0)?,
                    r.field::<String>(1)?,
                    r.field::<String>(2)?,
                    r.field::<String>(3)?,
                    r.field::<i64>(4)?,
                    r.field::<String>(5)?,
                    r.field::<String>(6)?,
                    r.field::<String>(7)?
                );
            }
            // The summary last, and the exit code: 1 when degraded, so a
            // cron job or an n8n node can alert on it.
            let mut objects = Vec::with_capacity(rows.len());
            for r in &rows {
                objects.push((r.field(0)?, r.field(1)?, r.field(2)?));
            }
            let health = medallion::status::health(&client, &cfg.slot, objects).await?;
            println!("medallion: {health}");
            if health.degraded() {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The options of `malloc_conf` reach jemalloc: a misspelt symbol or
    /// option would leave its defaults (no background thread, 10 s decay)
    /// without any error.
    #[test]
    fn jemalloc_runs_with_the_binarys_purging_options() {
        let heap = medallion::heap::settings().expect("jemalloc is the allocator");
        assert_eq!(heap, medallion::heap::SIDECAR_SETTINGS);
        assert_eq!(
            (
                heap.background_thread,
                heap.dirty_decay_ms,
                heap.muzzy_decay_ms
            ),
            (true, 1000, 0)
        );
    }
}
