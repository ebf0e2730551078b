//! One writer per slot: a lease held for as long as a sidecar writes.
//!
//! ```text
//!  medallion A (stopping)        Postgres                 medallion B (starting)
//!  lease session ── pg_advisory_lock(bronze, hash(slot)) ◄── pg_try_advisory_lock … every 1 s
//!  copies / stream / refine        │ held                    "waiting for the medallion holding
//!  exits (or its session ends) ───►│ released                 slot … (pid …) to stop"
//!                                  └──────────────────────► granted: B copies / streams / refines
//! ```
//!
//! The lease is a session-level advisory lock on a connection of its own,
//! keyed by the slot name and the writer's job ([`LeaseKind`]): the bronze
//! writer (`replicate`) and the silver/gold writer (`refine`) each hold one,
//! so a second `medallion run` started during a rolling restart waits for
//! the first to exit before it writes anything. Postgres releases the lock
//! when the holding session ends — a killed process cannot keep it — and the
//! holder checks [`Lease::check`] on every loop: once its session is gone it
//! stops writing ([`Error::LeaseLost`], retried: reconnect, take it again).
//! Delta's own commit protocol is the second line: a commit that loses to
//! another writer is [`Error::ConcurrentWriter`], never data written twice.
//!
//! The advisory lock lives in one database; a lake on an object store can be
//! reached from several. So the lake itself names its writer: the first
//! lease holder writes `<lake>/_medallion/owner.json` (the Postgres system
//! identifier, database and slot) with a create-only put, and every later
//! holder checks it ([`claim_lake`]). A sidecar of another database, another
//! server (whose LSNs mean nothing to the lake's `txn` versions) or another
//! slot is refused with [`Error::LakeOwned`] before it writes anything, so
//! together the lock and the claim make one writer per lake.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::catalog;
use crate::catalog::Field;
use crate::config::Config;
use crate::error::{Error, Result};

/// Which writer a lease protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseKind {
    /// The bronze path: copies and the stream.
    Bronze,
    /// Silver and gold refinement.
    Refine,
}

impl LeaseKind {
    /// First key of the advisory lock (`'mdl' << 8 | kind`).
    fn class(self) -> i32 {
        let base = i32::from_be_bytes([0, b'm', b'd', b'l']) << 8;
        base | match self {
            LeaseKind::Bronze => 1,
            LeaseKind::Refine => 2,
        }
    }

    fn what(self) -> &'static str {
        match self {
            LeaseKind::Bronze => "the bronze writer lease",
            LeaseKind::Refine => "the silver/gold writer lease",
        }
    }
}

/// A held lease; dropping it ends the session and releases the lock.
pub struct Lease {
    client: Client,
    conn: tokio::task::JoinHandle<()>,
    slot: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Lease {
    /// Take the lease for `cfg.slot`, waiting (up to `cfg.lease_timeout_ms`,
    /// 0 = for ever) while another sidecar holds it.
    pub async fn acquire(
        cfg: &Config,
        kind: LeaseKind,
        shutdown: &CancellationToken,
    ) -> Result<Lease> {
        Self::take(cfg, kind, shutdown, Some(cfg.lease_timeout_ms)).await
    }

    /// Take the lease if nobody holds it; fail at once otherwise.
    pub async fn try_acquire(cfg: &Config, kind: LeaseKind) -> Result<Lease> {
        Self::take(cfg, kind, &CancellationToken::new(), None).await
    }

    async fn take(
        cfg: &Config,
        kind: LeaseKind,
        shutdown: &CancellationToken,
        timeout_ms: Option<u64>,
    ) -> Result<Lease> {
        let (client, conn) = catalog::session(&cfg.database_url, "lease").await?;
        let started = Instant::now();
        let mut last_log: Option<Instant> = None;
        loop {
            let row = client
                .query_one(
                    "SELECT pg_catalog.pg_try_advisory_lock($1::int4, \
                            (pg_catalog.hashtext($2::text) & 2147483647)::int4)",
                    &[&kind.class(), &format!("medallion:{}", cfg.slot)],
                )
                .await
                .map_err(Error::pg("take the writer lease"))?;
            if row.field::<bool>(0)? {
                if last_log.is_some() {
                    tracing::info!(slot = %cfg.slot, lease = kind.what(), waited = ?started.elapsed(), "took over the writer lease");
                }
                claim_lake(cfg, &client).await?;
                return Ok(Lease {
                    client,
                    conn,
                    slot: cfg.slot.clone(),
                });
            }
            let holder = Self::holder(&client, kind, &cfg.slot).await;
            let waited = started.elapsed();
            let limit = match timeout_ms {
                None => Some(Duration::ZERO),
                Some(0) => None,
                Some(ms) => Some(Duration::from_millis(ms)),
            };
            if limit.is_some_and(|l| waited >= l) {
                return Err(Error::LeaseHeld {
                    what: kind.what().into(),
                    slot: cfg.slot.clone(),
                    holder,
                    waited_s: waited.as_secs(),
                });
            }
            if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                last_log = Some(Instant::now());
                tracing::warn!(
                    slot = %cfg.slot,
                    lease = kind.what(),
                    "waiting for the medallion holding slot \"{}\" ({holder}) to stop",
                    cfg.slot
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => return Err(Error::Interrupted),
            }
        }
    }

    /// Who holds the lease: `pid …, application …, client …`.
    async fn holder(client: &Client, kind: LeaseKind, slot: &str) -> String {
        let row = client
            .query_opt(
                "SELECT l.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local') \
                 FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
                   AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) \
                   AND l.classid = $1::int4::oid \
                   AND l.objid = (pg_catalog.hashtext($2::text) & 2147483647)::oid",
                &[&kind.class(), &format!("medallion:{slot}")],
            )
            .await;
        match row {
            Ok(Some(r)) => format!(
                "pid {}, application {:?}, client {}",
                r.field::<i32>(0).unwrap_or_default(),
                r.field::<String>(1).unwrap_or_default(),
                r.field::<String>(2).unwrap_or_default()
            ),
            _ => "pid unknown".into(),
        }
    }

    /// Still held? Errors once the session holding it has ended (the lock
    /// went with it: another sidecar may be writing now).
    pub fn check(&self) -> Result<()> {
        if self.client.is_closed() || self.conn.is_finished() {
            return Err(Error::LeaseLost {
                slot: self.slot.clone(),
            });
        }
        Ok(())
    }
}

/// Who writes a lake: the contents of `<lake>/_medallion/owner.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct LakeOwner {
    /// `pg_control_system().system_identifier`: LSNs are only comparable
    /// within one server's WAL history.
    system_identifier: String,
    database: String,
    slot: String,
}

impl LakeOwner {
    fn same_writer(&self, other: &LakeOwner) -> bool {
        self == other
    }
}

impl std::fmt::Display for LakeOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "slot \"{}\" of database \"{}\" on the Postgres server with system identifier {}",
            self.slot, self.database, self.system_identifier
        )
    }
}

/// Where the claim lives, relative to the lake root.
const OWNER_PATH: &str = "_medallion/owner.json";

/// Make sure the lake is this slot's: claim it if nobody has (create-only
/// put, so two first claimants cannot both win), refuse it if another
/// server, database or slot has.
async fn claim_lake(cfg: &Config, client: &Client) -> Result<()> {
    use object_store::{ObjectStoreExt, PutMode, PutPayload, path::Path};
    let row = client
        .query_one(
            "SELECT (SELECT system_identifier FROM pg_catalog.pg_control_system())::text, \
                    pg_catalog.current_database()::text",
            &[],
        )
        .await
        .map_err(Error::pg("read the server's system identifier"))?;
    let me = LakeOwner {
        system_identifier: row.field(0)?,
        database: row.field(1)?,
        slot: cfg.slot.clone(),
    };
    let lake = crate::lake::Lake::from_config(cfg)?;
    let root = lake.root();
    let store = lake.store()?;
    let path = Path::from(OWNER_PATH);
    let body = serde_json::to_vec_pretty(&me)
        .map_err(|e| Error::Config(format!("lake owner claim: {e}")))?;
    let lake = crate::error::scrub_url(root.as_str());
    match store
        .put_opts(&path, PutPayload::from(body), PutMode::Create.into())
        .await
    {
        Ok(_) => {
            tracing::info!(lake = %lake, owner = %me, "claimed the lake");
            return Ok(());
        }
        Err(object_store::Error::AlreadyExists { .. }) => {}
        Err(e) => {
            return Err(Error::Delta {
                context: format!("claim the lake at {lake}"),
                source: deltalake::DeltaTableError::ObjectStore { source: e },
            });
        }
    }
    let bytes = store
        .get(&path)
        .await
        .map_err(|e| Error::Delta {
            context: format!("read the lake's owner at {lake}"),
            source: deltalake::DeltaTableError::ObjectStore { source: e },
        })?
        .bytes()
        .await
        .map_err(|e| Error::Delta {
            context: format!("read the lake's owner at {lake}"),
            source: deltalake::DeltaTableError::ObjectStore { source: e },
        })?;
    let owner: LakeOwner = serde_json::from_slice(&bytes).map_err(|e| Error::LakeOwned {
        lake: lake.clone(),
        owner: format!("an unreadable claim ({e})"),
        me: me.to_string(),
    })?;
    if owner.same_writer(&me) {
        Ok(())
    } else {
        Err(Error::LakeOwned {
            lake,
            owner: owner.to_string(),
            me: me.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_names_server_database_and_slot() {
        let a = LakeOwner {
            system_identifier: "7714585689148847963".into(),
            database: "odoo".into(),
            slot: "medallion".into(),
        };
        let json = serde_json::to_string(&a).unwrap();
        let back: LakeOwner = serde_json::from_str(&json).unwrap();
        assert!(back.same_writer(&a));
        for other in [
            LakeOwner {
                system_identifier: "1".into(),
                ..a.clone()
            },
            LakeOwner {
                database: "odoo2".into(),
                ..a.clone()
            },
            LakeOwner {
                slot: "medallion2".into(),
                ..a.clone()
            },
        ] {
            assert!(!other.same_writer(&a), "{other} must not pass for {a}");
        }
    }

    #[test]
    fn each_writer_has_its_own_key() {
        assert_ne!(LeaseKind::Bronze.class(), LeaseKind::Refine.class());
        assert!(LeaseKind::Bronze.class() > 0 && LeaseKind::Refine.class() > 0);
    }
}
