//! ImageLocality: prefer nodes that already hold the pod's wasm modules, fetched and
//! compiled, so the pod starts without a download and a Cranelift compile.
//!
//! Nodes report what they hold in `status.images` (`names`: the reference pulled and its
//! `sha256:` digest; `sizeBytes`). A pod's image is looked up by its reference, or by its
//! digest when pinned with `@sha256:`.
//!
//! The shape is Kubernetes' (a sum over the pod's containers of the image's size scaled by
//! the fraction of nodes that hold it, so that an image present everywhere does not pull
//! every pod to a few nodes, then clamped and scaled to 0..100), with thresholds for wasm:
//! Kubernetes' (23 MB to 1 GB per container) would give every module, usually well under
//! 10 MB, a zero. Here any module counts as at least [`MIN_WEIGHT`] (compiling has a
//! floor cost whatever the size) and the score saturates at [`MAX_PER_CONTAINER`].

use crate::scheduler::framework::{
    Cycle, MAX_NODE_SCORE, NodeInfo, PodInfo, ScorePlugin, keep_scores,
};
use std::collections::HashMap;

pub const NAME: &str = "ImageLocality";
pub const PLUGIN: ScorePlugin = ScorePlugin {
    name: NAME,
    weight: 1,
    score,
    normalize: keep_scores,
};

/// What holding any module is worth, whatever its size.
pub const MIN_WEIGHT: i64 = 1 << 20;
/// Where the score per container saturates.
pub const MAX_PER_CONTAINER: i64 = 2 << 20;

/// The score of `node` for `pod`, knowing how many of `num_nodes` nodes hold each image.
pub fn locality(
    pod: &PodInfo,
    node: &NodeInfo,
    image_nodes: &HashMap<String, usize>,
    num_nodes: usize,
) -> i64 {
    if pod.images.is_empty() || node.images.is_empty() || num_nodes == 0 {
        return 0;
    }
    let mut sum: f64 = 0.0;
    for image in &pod.images {
        if let Some(size) = node.images.get(image) {
            let holders = image_nodes.get(image).copied().unwrap_or(1).max(1);
            let spread = holders as f64 / num_nodes as f64;
            sum += (*size).max(MIN_WEIGHT) as f64 * spread.min(1.0);
        }
    }
    let max = (MAX_PER_CONTAINER * pod.images.len() as i64) as f64;
    (MAX_NODE_SCORE as f64 * sum.min(max) / max) as i64
}

fn score(cycle: &Cycle, node: &NodeInfo) -> i64 {
    locality(cycle.pod, node, cycle.image_nodes, cycle.num_nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::framework::testing::*;
    use serde_json::json;

    #[test]
    fn nodes_holding_the_module_score_higher_scaled_by_spread() {
        let p = pod_with(
            "p",
            json!({}),
            json!({"containers": [{"name": "a", "image": "/srv/app.wasm"}]}),
        );
        let mut holder = node_info("a", 1000, 1 << 30, 10);
        holder.images = HashMap::from([("/srv/app.wasm".to_string(), 100_000)]);
        let other = node_info("b", 1000, 1 << 30, 10);
        let one_of_two = HashMap::from([("/srv/app.wasm".to_string(), 1)]);
        // max(100 KB, 1 MiB) * 1/2 of 2 MiB.
        assert_eq!(locality(&p, &holder, &one_of_two, 2), 25);
        assert_eq!(locality(&p, &other, &one_of_two, 2), 0);
        let big = HashMap::from([("/srv/app.wasm".to_string(), 1)]);
        holder.images.insert("/srv/app.wasm".into(), 64 << 20);
        assert_eq!(locality(&p, &holder, &big, 2), 100, "saturates");
    }

    #[test]
    fn pinned_images_match_by_digest() {
        let hex = "ab".repeat(32);
        let p = pod_with(
            "p",
            json!({}),
            json!({"containers": [{"name": "a", "image": format!("http://x/app.wasm@sha256:{hex}")}]}),
        );
        let mut holder = node_info("a", 1000, 1 << 30, 10);
        holder.images = HashMap::from([(format!("sha256:{hex}"), 3 << 20)]);
        let all = HashMap::from([(format!("sha256:{hex}"), 1)]);
        assert_eq!(locality(&p, &holder, &all, 1), 100);
    }
}
