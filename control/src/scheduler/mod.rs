//! The scheduler: places pending pods on nodes.

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Tunables of the scheduler.
#[derive(Debug, Clone, Default)]
pub struct SchedulerConfig {}

/// Starts the scheduler; its tasks end when `shutdown` is cancelled.
pub fn start(
    client: kube::Client,
    config: &SchedulerConfig,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let _ = (client, config, shutdown, tasks);
}
