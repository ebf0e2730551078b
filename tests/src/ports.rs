//! Loopback ports for the servers a test starts (Postgres, Ceph, the
//! sidecar's HTTP API, n8n …).
//!
//! A port is chosen here and bound later by another process, sometimes
//! seconds later (Ceph's gateway binds after its monitor and OSD are up).
//! Asking the kernel for port 0 would pick from the *ephemeral* range, the
//! same range every outgoing connection of the suite takes its source port
//! from, so a client could hold the port by the time the server binds it:
//! the server then fails to start, or worse, the test talks to the wrong
//! server. Ports here come from below the ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`), where the kernel never
//! assigns source ports, each handed out once per test process and checked
//! free on loopback when handed out. The start is spread by process id so
//! two suites on one machine rarely probe the same ports.

use std::net::TcpListener;
use std::sync::Mutex;

/// The lowest port handed out (above the well-known and common service ports).
const LOWEST: u16 = 12_000;

/// The next port to try in this process (`None` until the first call).
static NEXT: Mutex<Option<u16>> = Mutex::new(None);

/// A loopback TCP port that is free now, that no other call in this process
/// has returned, and that no outgoing connection will take as its source port.
///
/// # Panics
/// If every port below the ephemeral range is taken.
pub fn free_port() -> u16 {
    let top = ephemeral_low().max(LOWEST + 1_000);
    let span = top - LOWEST;
    let mut next = NEXT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut candidate =
        next.unwrap_or_else(|| LOWEST + ((std::process::id() % 997) as u16 * 17) % span);
    for _ in 0..span {
        let port = candidate;
        candidate = if candidate + 1 >= top {
            LOWEST
        } else {
            candidate + 1
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            *next = Some(candidate);
            return port;
        }
    }
    panic!("no free loopback port between {LOWEST} and {top}");
}

/// The first port of the kernel's ephemeral range (32768 if unreadable).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            ports.len(),
            "a port was handed out twice: {ports:?}"
        );
        let low = ephemeral_low();
        assert!(
            ports
                .iter()
                .all(|p| *p >= LOWEST && *p < low.max(LOWEST + 1_000)),
            "{ports:?}"
        );
        // Still free: each can be bound now.
        for p in &ports {
            TcpListener::bind(("127.0.0.1", *p)).expect("handed-out port is free");
        }
    }

    #[test]
    fn a_port_in_use_is_skipped() {
        let first = free_port();
        let _held = TcpListener::bind(("127.0.0.1", first + 1)).ok();
        let second = free_port();
        assert_ne!(second, first);
        if _held.is_some() {
            assert_ne!(second, first + 1, "the held port was handed out");
        }
    }
}
