//! The bronze writer's acknowledged position, for a refiner in the same
//! process (`medallion run`).
//!
//! ```text
//!   flush: every table committed ──► ack(lsn) to the slot ──► Acknowledged::advance(lsn)
//!                                                                  │ watch channel
//!   refiner: waits on the interval OR a change here ◄──────────────┘
//! ```
//!
//! The value means what the slot's `confirmed_flush_lsn` means: every source
//! transaction that commits below it is durable in every bronze table. It
//! only goes up, even when the writer reconnects at an older slot position
//! (Postgres 15 may have forgotten a confirmation it did not persist). A
//! refiner reading it needs no round trip to Postgres, and never waits for
//! the slot to show an acknowledgement the writer has already sent.

use tokio::sync::watch;

use crate::lsn::Lsn;

/// Where the bronze writer announces each acknowledged position.
#[derive(Debug, Clone)]
pub struct Acknowledged {
    tx: watch::Sender<Option<Lsn>>,
}

impl Default for Acknowledged {
    fn default() -> Self {
        Acknowledged::new()
    }
}

impl Acknowledged {
    /// Nothing acknowledged yet.
    pub fn new() -> Self {
        Acknowledged {
            tx: watch::Sender::new(None),
        }
    }

    /// A receiver that sees every later advance (and the current value).
    pub fn subscribe(&self) -> watch::Receiver<Option<Lsn>> {
        self.tx.subscribe()
    }

    /// The highest position acknowledged so far.
    pub fn get(&self) -> Option<Lsn> {
        *self.tx.borrow()
    }

    /// Record that `lsn` was acknowledged; receivers are woken only when it
    /// is higher than every earlier one.
    pub(crate) fn advance(&self, lsn: Lsn) {
        self.tx.send_if_modified(|current| {
            if current.is_some_and(|c| c >= lsn) {
                false
            } else {
                *current = Some(lsn);
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_a_higher_position_wakes_the_refiner() {
        let acked = Acknowledged::new();
        let mut rx = acked.subscribe();
        assert_eq!(acked.get(), None);
        acked.advance(Lsn::from_lake(100));
        rx.changed().await.expect("woken by the first position");
        assert_eq!(*rx.borrow_and_update(), Some(Lsn::from_lake(100)));
        // A reconnect at an older slot position acknowledges lower values.
        acked.advance(Lsn::from_lake(40));
        acked.advance(Lsn::from_lake(100));
        assert!(
            !rx.has_changed().expect("sender alive"),
            "an older or equal position woke it"
        );
        assert_eq!(acked.get(), Some(Lsn::from_lake(100)));
        acked.advance(Lsn::from_lake(101));
        assert!(rx.has_changed().expect("sender alive"));
        assert_eq!(*rx.borrow_and_update(), Some(Lsn::from_lake(101)));
    }
}
