//! The tunnel's counters, rendered in Prometheus text format for the node server's
//! `/metrics` next to the proxy's:
//!
//! - `wharf_tunnel_connections_total{result}`: connections this node's tunnel server
//!   handled: `ok` (tunneled to a pod), `unauthorized` (no or wrong credential),
//!   `forbidden` (target outside this node's pod range), `bad_request`, `failed` (the pod
//!   could not be reached);
//! - `wharf_tunnel_active`: tunneled connections open now (server side);
//! - `wharf_tunnel_dials_total{result}`: connections this node opened through other nodes'
//!   tunnels (`ok`, `error`), for the proxy and for mirrors;
//! - `wharf_tunnel_mirrors{state}`: remote pod ports this node listens for (`listening`),
//!   found to be on this machine (`local`), or could not bind (`failed`);
//! - `wharf_tunnel_mirror_connections_total`: connections mirrors accepted.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// How the tunnel server ended a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Unauthorized,
    Forbidden,
    BadRequest,
    Failed,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::Unauthorized,
        Outcome::Forbidden,
        Outcome::BadRequest,
        Outcome::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Forbidden => "forbidden",
            Outcome::BadRequest => "bad_request",
            Outcome::Failed => "failed",
        }
    }
}

/// Every tunnel counter of a node.
#[derive(Debug, Default)]
pub struct TunnelMetrics {
    connections: [AtomicU64; 5],
    active: AtomicI64,
    dials_ok: AtomicU64,
    dials_error: AtomicU64,
    mirrors_listening: AtomicU64,
    mirrors_local: AtomicU64,
    mirrors_failed: AtomicU64,
    mirror_connections: AtomicU64,
}

/// One open tunneled connection; dropping it ends it.
#[derive(Debug)]
pub struct ActiveGuard<'a>(&'a AtomicI64);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl TunnelMetrics {
    pub fn count(&self, outcome: Outcome) {
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.connections[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn connections(&self, outcome: Outcome) -> u64 {
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.connections[i].load(Ordering::Relaxed)
    }

    /// Counts an open tunneled connection until the guard is dropped.
    pub fn open(&self) -> ActiveGuard<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(&self.active)
    }

    pub fn active(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn dialed(&self, ok: bool) {
        let c = if ok {
            &self.dials_ok
        } else {
            &self.dials_error
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dials(&self, ok: bool) -> u64 {
        if ok {
            &self.dials_ok
        } else {
            &self.dials_error
        }
        .load(Ordering::Relaxed)
    }

    /// The mirrors' states after a reconcile.
    pub fn set_mirrors(&self, listening: usize, local: usize, failed: usize) {
        self.mirrors_listening
            .store(listening as u64, Ordering::Relaxed);
        self.mirrors_local.store(local as u64, Ordering::Relaxed);
        self.mirrors_failed.store(failed as u64, Ordering::Relaxed);
    }

    pub fn mirror_accepted(&self) {
        self.mirror_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP wharf_tunnel_connections_total Connections this node's tunnel handled, by result.\n\
             # TYPE wharf_tunnel_connections_total counter"
        );
        for outcome in Outcome::ALL {
            let _ = writeln!(
                out,
                "wharf_tunnel_connections_total{{result=\"{}\"}} {}",
                outcome.label(),
                self.connections(outcome)
            );
        }
        let _ = writeln!(
            out,
            "# HELP wharf_tunnel_active Tunneled connections open now.\n\
             # TYPE wharf_tunnel_active gauge\nwharf_tunnel_active {}",
            self.active()
        );
        let _ = writeln!(
            out,
            "# HELP wharf_tunnel_dials_total Connections opened through other nodes' tunnels.\n\
             # TYPE wharf_tunnel_dials_total counter\n\
             wharf_tunnel_dials_total{{result=\"ok\"}} {}\n\
             wharf_tunnel_dials_total{{result=\"error\"}} {}",
            self.dials(true),
            self.dials(false)
        );
        let _ = writeln!(
            out,
            "# HELP wharf_tunnel_mirrors Remote pod ports this node mirrors, by state.\n\
             # TYPE wharf_tunnel_mirrors gauge\n\
             wharf_tunnel_mirrors{{state=\"listening\"}} {}\n\
             wharf_tunnel_mirrors{{state=\"local\"}} {}\n\
             wharf_tunnel_mirrors{{state=\"failed\"}} {}",
            self.mirrors_listening.load(Ordering::Relaxed),
            self.mirrors_local.load(Ordering::Relaxed),
            self.mirrors_failed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP wharf_tunnel_mirror_connections_total Connections accepted by mirrors of remote pods.\n\
             # TYPE wharf_tunnel_mirror_connections_total counter\n\
             wharf_tunnel_mirror_connections_total {}",
            self.mirror_connections.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series() {
        let m = TunnelMetrics::default();
        m.count(Outcome::Ok);
        m.count(Outcome::Unauthorized);
        m.count(Outcome::Unauthorized);
        m.dialed(true);
        m.set_mirrors(2, 1, 0);
        {
            let _open = m.open();
            assert_eq!(m.active(), 1);
        }
        assert_eq!(m.active(), 0);
        let text = m.render();
        for line in [
            "wharf_tunnel_connections_total{result=\"ok\"} 1",
            "wharf_tunnel_connections_total{result=\"unauthorized\"} 2",
            "wharf_tunnel_connections_total{result=\"forbidden\"} 0",
            "wharf_tunnel_active 0",
            "wharf_tunnel_dials_total{result=\"ok\"} 1",
            "wharf_tunnel_mirrors{state=\"listening\"} 2",
            "wharf_tunnel_mirrors{state=\"local\"} 1",
            "wharf_tunnel_mirror_connections_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
