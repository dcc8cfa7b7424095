//! The controller manager: level-triggered reconcilers that drive the cluster toward what
//! its objects ask for.
//!
//! Every controller follows the same shape (kube-runtime's `Controller`): it is fed by
//! watches, gets an object key (never an event), reads the current state, computes what
//! to do with a pure `decide` function that has its own unit tests, executes that through
//! the API, and returns requeue-or-await-change; a separate error policy backs off. They
//! all talk to the API server through the in-process client, like any user could.

use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Tunables of the controllers, with laptop defaults (detect in seconds, not minutes).
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// A node whose Lease was not renewed for this long becomes Ready=Unknown.
    pub node_monitor_grace: Duration,
    /// Default `tolerationSeconds` for the unreachable/not-ready taints: how long pods stay
    /// on an unreachable node before they are evicted.
    pub pod_eviction_timeout: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            node_monitor_grace: Duration::from_secs(6),
            pod_eviction_timeout: Duration::from_secs(4),
        }
    }
}

/// Starts every controller; their tasks end when `shutdown` is cancelled.
pub fn start_all(
    client: kube::Client,
    config: &ControllerConfig,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    // Each controller adds its start line here.
    let _ = (client, config, shutdown, tasks);
}
