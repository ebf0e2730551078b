//! Operating the lakehouse from outside: an HTTP API, Prometheus metrics
//! and an MCP server for AI agents, all on one listener
//! (`MEDALLION_HTTP_ADDR`).
//!
//! ```text
//!  n8n / curl / Prometheus            AI agent (MCP client)
//!         │ HTTP + bearer token             │ streamable HTTP   │ stdio
//!         ▼                                 ▼                   ▼
//!  ┌──────────── axum router ────────────────────┐   `medallion mcp`
//!  │ /health /ready /metrics /openapi.json (open)│          │
//!  │ auth ─► /v1/* (http.rs)   /mcp (mcp.rs) ◄───┼──────────┘
//!  └──────────────┬──────────────────┬───────────┘
//!                 ▼                  ▼
//!        operations.rs (one implementation of every request)
//!          │ status, runs, lineage,      │ gold rows, read-only SQL
//!          │ refresh, resync             │ (query.rs: limits on rows,
//!          ▼                             ▼  time, memory, concurrency)
//!   Postgres: medallion.* functions    the lake: silver/*, gold/* Delta
//!   (permissions, NOTIFY, audit)       tables read by DataFusion
//! ```
//!
//! Only this module speaks HTTP; refresh and resync go through the
//! extension's functions, so what the sidecar's role may do is decided in
//! Postgres, and what a client may do by its token's [`auth::Scope`].

pub mod auth;
pub mod http;
pub mod mcp;
pub mod operations;
pub(crate) mod query;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use auth::Tokens;
use http::AppState;
use operations::Operations;

/// Host names the MCP endpoint accepts for a listener on `listen`.
fn mcp_hosts(cfg: &Config, listen: &SocketAddr) -> Option<Vec<String>> {
    let mut hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if !listen.ip().is_unspecified() {
        hosts.push(listen.ip().to_string());
    }
    hosts.extend(cfg.api.allowed_hosts.iter().cloned());
    // Behind bearer tokens on a wildcard address (a container), any Host
    // is fine: a DNS-rebinding page has no token. Without tokens, loopback
    // names only.
    let tokens = cfg.api.has_operator_token() || cfg.api.has_read_token();
    if tokens && cfg.api.allowed_hosts.is_empty() && listen.ip().is_unspecified() {
        None
    } else {
        Some(hosts)
    }
}

/// The router of the whole API.
pub(crate) fn router(
    cfg: &Config,
    listen: &SocketAddr,
    ops: Arc<Operations>,
    metrics: Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Result<Router> {
    let tokens = Arc::new(Tokens::load(&cfg.api, listen)?);
    let mut mcp_config = StreamableHttpServerConfig::default()
        .with_cancellation_token(shutdown.child_token())
        .with_json_response(true);
    mcp_config = match mcp_hosts(cfg, listen) {
        Some(hosts) => mcp_config.with_allowed_hosts(hosts),
        None => mcp_config.disable_allowed_hosts(),
    };
    let mcp_ops = ops.clone();
    let mcp = StreamableHttpService::new(
        move || Ok(mcp::McpServer::new(mcp_ops.clone())),
        Arc::new(LocalSessionManager::default()),
        mcp_config,
    );
    let state = AppState { ops, metrics };
    let protected = Router::new()
        .route("/v1/status", get(http::status))
        .route("/v1/runs", get(http::runs))
        .route("/v1/lineage", get(http::lineage))
        .route("/v1/models", get(http::models))
        .route("/v1/models/{name}", get(http::model))
        .route("/v1/models/{name}/refresh", post(http::refresh))
        .route("/v1/tables/{table}/resync", post(http::resync))
        .route("/v1/gold/{name}", get(http::gold))
        .route("/v1/query", post(http::query))
        .nest_service("/mcp", mcp)
        .route_layer(axum::middleware::from_fn_with_state(
            tokens,
            auth::authenticate,
        ));
    Ok(Router::new()
        .route("/health", get(http::health))
        .route("/ready", get(http::ready))
        .route("/metrics", get(http::metrics))
        .route("/openapi.json", get(http::openapi))
        .merge(protected)
        .fallback(http::not_found)
        .with_state(state))
}

/// What `medallion check` says about the API settings: the address
/// parses, the tokens load and fit it (without binding: `run` may hold it).
pub fn check(cfg: &Config) -> Result<String> {
    let addr = cfg.api.addr.as_deref().unwrap_or_default();
    let listen: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            Error::Config(format!(
                "MEDALLION_HTTP_ADDR {addr:?} is not host:port (e.g. 127.0.0.1:8080)"
            ))
        })?;
    Tokens::load(&cfg.api, &listen)?;
    let auth = match (cfg.api.has_operator_token(), cfg.api.has_read_token()) {
        (true, true) => "operator and read-only tokens",
        (true, false) => "an operator token",
        (false, true) => "a read-only token",
        (false, false) if cfg.api.insecure_loopback => "no token (loopback only)",
        (false, false) => {
            return Err(Error::Config(
                "no MEDALLION_API_TOKEN or MEDALLION_API_READ_TOKEN: every /v1 and /mcp request would be refused".into(),
            ));
        }
    };
    Ok(format!("HTTP API and MCP on {listen} with {auth}"))
}

async fn bind(addr: &str) -> Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(Error::io(format!("bind the HTTP API to {addr}")))?;
    let local = listener
        .local_addr()
        .map_err(Error::io(format!("address of the HTTP API on {addr}")))?;
    Ok((listener, local))
}

/// Bind `cfg.api.addr` and build the API (a bad token or an address in
/// use fails here), then return the server, which runs until `shutdown`.
/// `metrics` are this process's; `in_process` says whether this process
/// replicates and refines (then readiness also checks its streaming and
/// its refiner).
pub async fn start(
    cfg: &Config,
    metrics: Arc<Metrics>,
    in_process: bool,
    shutdown: CancellationToken,
) -> Result<impl Future<Output = Result<()>> + Send + 'static> {
    let addr = cfg.api.addr.clone().ok_or_else(|| {
        Error::Config("MEDALLION_HTTP_ADDR is not set (e.g. 127.0.0.1:8080)".into())
    })?;
    let (listener, local) = bind(&addr).await?;
    let ops = Arc::new(Operations::new(
        cfg,
        crate::lake::Lake::from_config(cfg)?,
        in_process.then(|| metrics.clone()),
    ));
    let app = router(cfg, &local, ops, metrics, &shutdown)?;
    tracing::info!(addr = %local, "serving the HTTP API, /metrics and /mcp");
    Ok(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(Error::io(format!("HTTP API on {local}")))
    })
}

/// Serve only `/metrics` and `/health` on `addr` (`MEDALLION_METRICS_ADDR`,
/// for a Prometheus port apart from the API).
pub async fn serve_metrics(
    addr: String,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<()> {
    let (listener, local) = bind(&addr).await?;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/health", get(http::health));
    tracing::info!(addr = %local, "serving /metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(Error::io(format!("metrics endpoint on {local}")))
}

/// The operations behind the MCP tools over stdio (`medallion mcp`).
pub async fn serve_mcp_stdio(cfg: &Config) -> Result<()> {
    let ops = Arc::new(Operations::new(
        cfg,
        crate::lake::Lake::from_config(cfg)?,
        None,
    ));
    mcp::serve_stdio(ops).await
}
