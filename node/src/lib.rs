//! wharf-node: everything that runs on a node.
//!
//! The node agent (wharf's kubelet) watches the pods bound to its node and runs them
//! through `wharf-runtime`; the proxy and cluster DNS give Services their addresses and
//! names. The agent arrives with the node issue; until then this crate only fixes the
//! place of those parts in the workspace.
