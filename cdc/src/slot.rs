//! The replication slot: created once, checked on every start, its lag and
//! retained WAL reported; an invalidated slot is a definite error with the
//! resync path in its message.

use std::time::Duration;

use pg_walstream::{
    LogicalReplicationStream, ReplicationSlotOptions, ReplicationStreamConfig, RetryConfig,
    StreamingMode,
};
use tokio_postgres::Client;

use crate::config::Config;

use crate::catalog::Field;
use crate::error::{Error, Result};
use crate::lsn::Lsn;

/// What Postgres says about our slot.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    /// Where a restart streams from; [`Lsn::ZERO`] when Postgres has none
    /// (an invalidated slot, whose `restart_lsn` is NULL too).
    pub confirmed_flush_lsn: Lsn,
    /// None once the slot is invalidated.
    pub restart_lsn: Option<Lsn>,
    pub wal_status: Option<String>,
    pub active_pid: Option<i32>,
    pub retained_bytes: i64,
}

/// Read the slot, or None when it does not exist.
pub async fn read(client: &Client, slot: &str) -> Result<Option<SlotInfo>> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn, restart_lsn, wal_status, active_pid, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, plugin::text, \
                    database::text = current_database() \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(Error::pg("read replication slot"))?;
    let Some(r) = row else { return Ok(None) };
    let plugin: Option<String> = r.field(5)?;
    let same_db: Option<bool> = r.field(6)?;
    if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
        return Err(Error::Config(format!(
            "replication slot \"{slot}\" exists but is not a pgoutput slot of this database; \
             choose another MEDALLION_SLOT"
        )));
    }
    Ok(Some(SlotInfo {
        confirmed_flush_lsn: r.field::<Option<Lsn>>(0)?.unwrap_or(Lsn::ZERO),
        restart_lsn: r.field(1)?,
        wal_status: r.field(2)?,
        active_pid: r.field(3)?,
        retained_bytes: r.field::<Option<i64>>(4)?.unwrap_or(0),
    }))
}

/// Check that an existing slot is usable (not invalidated, not in use).
/// Creating it is [`connect_stream`]'s job, with an exported snapshot.
pub async fn validate(client: &Client, slot: &str) -> Result<SlotInfo> {
    let lost = || Error::SlotLost {
        slot: slot.to_string(),
        state: "disappeared while medallion was starting".into(),
    };
    let mut info = read(client, slot).await?.ok_or_else(lost)?;
    // A sidecar that just handed over the writer lease may still be
    // closing its replication connection: give its walsender a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while info.active_pid.is_some() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        info = read(client, slot).await?.ok_or_else(lost)?;
    }
    if info.wal_status.as_deref() == Some("lost") || info.restart_lsn.is_none() {
        return Err(Error::SlotLost {
            slot: slot.to_string(),
            state: format!(
                "was invalidated (wal_status = {}), probably by max_slot_wal_keep_size",
                info.wal_status.as_deref().unwrap_or("unknown")
            ),
        });
    }
    if let Some(pid) = info.active_pid {
        return Err(Error::Config(format!(
            "replication slot \"{slot}\" is in use by process {pid}: another medallion \
             is running with the same MEDALLION_SLOT"
        )));
    }
    Ok(info)
}

/// How a replication connection creates its slot, if it has to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotCreation {
    /// The slot exists (or is created elsewhere).
    None,
    /// Create it with an exported snapshot (for the initial copy).
    ExportSnapshot,
    /// Create a temporary slot with an exported snapshot (one table's copy).
    TemporaryExportSnapshot,
}

/// Open a pgoutput protocol v2 replication connection for `slot`:
/// `streaming` turns on streaming of in-progress transactions and logical
/// messages (the main stream); a copy's temporary slot needs neither.
pub async fn connect_stream(
    cfg: &Config,
    slot: &str,
    streaming: bool,
    creation: SlotCreation,
) -> Result<LogicalReplicationStream> {
    let mut stream_cfg = ReplicationStreamConfig::new(
        slot.to_string(),
        cfg.publication.clone(),
        2,
        if streaming {
            StreamingMode::On
        } else {
            StreamingMode::Off
        },
        Duration::from_secs(1),
        Duration::from_secs(30),
        Duration::from_secs(60),
        RetryConfig::default(),
    )
    .with_messages(streaming);
    if creation != SlotCreation::None {
        stream_cfg = stream_cfg.with_slot_options(ReplicationSlotOptions {
            temporary: creation == SlotCreation::TemporaryExportSnapshot,
            snapshot: Some("export".into()),
            ..Default::default()
        });
    }
    LogicalReplicationStream::new(&replication_conninfo(&cfg.database_url), stream_cfg)
        .await
        .map_err(Error::repl(format!(
            "replication connection for slot {slot}"
        )))
}

/// A replication connection string for `url` (adds `replication=database`).
pub fn replication_conninfo(url: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}replication=database")
    } else {
        format!("{url} replication=database")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conninfo() {
        assert_eq!(
            super::replication_conninfo("postgresql://u@h:5/db"),
            "postgresql://u@h:5/db?replication=database"
        );
        assert_eq!(
            super::replication_conninfo("postgresql://u@h/db?sslmode=disable"),
            "postgresql://u@h/db?sslmode=disable&replication=database"
        );
        assert_eq!(
            super::replication_conninfo("host=h"),
            "host=h replication=database"
        );
    }
}
