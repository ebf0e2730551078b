//! Prometheus metrics: counters in memory, served as text on `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, RetryPolicy};

/// Process-wide counters.
#[derive(Default)]
pub struct Metrics {
    changes: AtomicU64,
    commits: AtomicU64,
    commit_micros: AtomicU64,
    acked_lsn: AtomicU64,
    errors_transient: AtomicU64,
    errors_table: AtomicU64,
    errors_fatal: AtomicU64,
    failed_silver: AtomicU64,
    failed_gold: AtomicU64,
    refine_success_unix: AtomicU64,
}

impl Metrics {
    pub fn add_changes(&self, n: u64) {
        self.changes.fetch_add(n, Ordering::Relaxed);
    }

    pub fn commit(&self, took: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn set_acked(&self, lsn: u64) {
        self.acked_lsn.store(lsn, Ordering::Relaxed);
    }

    pub fn error(&self, e: &Error) {
        let c = match e.retry_policy() {
            RetryPolicy::RetryOnTimer => &self.errors_transient,
            RetryPolicy::NeedsOperator => &self.errors_table,
            RetryPolicy::Never => &self.errors_fatal,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A refinement cycle finished: how many silver tables and gold models
    /// are failed (publication included), and when.
    pub fn refine_cycle(&self, failed_silver: u64, failed_gold: u64) {
        self.failed_silver.store(failed_silver, Ordering::Relaxed);
        self.failed_gold.store(failed_gold, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.refine_success_unix.store(now, Ordering::Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# HELP medallion_changes_total Row changes written to bronze (snapshot rows included).\n\
             # TYPE medallion_changes_total counter\nmedallion_changes_total {}\n\
             # HELP medallion_bronze_commits_total Bronze Delta commits.\n\
             # TYPE medallion_bronze_commits_total counter\nmedallion_bronze_commits_total {}\n\
             # HELP medallion_bronze_commit_seconds Time spent in bronze commits.\n\
             # TYPE medallion_bronze_commit_seconds summary\nmedallion_bronze_commit_seconds_sum {}\nmedallion_bronze_commit_seconds_count {}\n\
             # HELP medallion_acked_lsn Last LSN acknowledged to Postgres (durable in the lake).\n\
             # TYPE medallion_acked_lsn gauge\nmedallion_acked_lsn {}\n\
             # HELP medallion_errors_total Errors by kind.\n\
             # TYPE medallion_errors_total counter\n\
             medallion_errors_total{{kind=\"transient\"}} {}\nmedallion_errors_total{{kind=\"table\"}} {}\nmedallion_errors_total{{kind=\"fatal\"}} {}\n\
             # HELP medallion_refine_failed_objects Silver tables and gold models failed in the last refinement cycle.\n\
             # TYPE medallion_refine_failed_objects gauge\n\
             medallion_refine_failed_objects{{layer=\"silver\"}} {}\nmedallion_refine_failed_objects{{layer=\"gold\"}} {}\n\
             # HELP medallion_refine_last_cycle_timestamp_seconds When the last refinement cycle finished (0: none yet); alert on its age.\n\
             # TYPE medallion_refine_last_cycle_timestamp_seconds gauge\nmedallion_refine_last_cycle_timestamp_seconds {}\n",
            g(&self.changes),
            g(&self.commits),
            g(&self.commit_micros) as f64 / 1e6,
            g(&self.commits),
            g(&self.acked_lsn),
            g(&self.errors_transient),
            g(&self.errors_table),
            g(&self.errors_fatal),
            g(&self.failed_silver),
            g(&self.failed_gold),
            g(&self.refine_success_unix),
        )
    }
}

/// Serve `/metrics` on `addr` until the process ends.
pub async fn serve(addr: String, metrics: std::sync::Arc<Metrics>) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(Error::io(format!("bind metrics address {addr}")))?;
    tracing::info!(%addr, "serving /metrics");
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if req.starts_with("GET /metrics") {
                ("200 OK", m.render())
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
