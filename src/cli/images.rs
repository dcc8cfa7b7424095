//! `wharf images [--node NODE]`: the images each node holds, from the Nodes'
//! `status.images` (what the node reports from its image store, and what the scheduler's
//! image locality reads), so a user sees what is cached where without logging in to a
//! node. One line per image: the node, the references it was pulled by, its image ID
//! (`REGISTRY/REPO@sha256:...` for a registry image, the `.wasm`'s digest otherwise) and
//! its size.

use super::cluster::Cluster;
use super::describe::tabwrite;
use clap::Args;
use k8s_openapi::api::core::v1::{ContainerImage, Node};
use kube::api::{Api, ListParams};

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Only the images of this node
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
}

pub async fn run(cluster: &Cluster, args: ImagesArgs) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(cluster.client());
    let nodes = match &args.node {
        Some(name) => vec![api.get(name).await.map_err(|e| cluster.explain(e))?],
        None => {
            api.list(&ListParams::default())
                .await
                .map_err(|e| cluster.explain(e))?
                .items
        }
    };
    let table = render(&nodes);
    if table.is_empty() {
        eprintln!("No images found.");
    } else {
        print!("{table}");
    }
    Ok(())
}

/// The table, or "" if no node holds an image.
fn render(nodes: &[Node]) -> String {
    let mut lines = Vec::new();
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or("");
        let images = node.status.as_ref().and_then(|s| s.images.as_ref());
        for image in images.into_iter().flatten() {
            let (references, id) = describe_names(image);
            lines.push(format!(
                "{name}\t{references}\t{id}\t{}",
                human_size(image.size_bytes.unwrap_or(0))
            ));
        }
    }
    if lines.is_empty() {
        return String::new();
    }
    lines.sort();
    tabwrite(&format!(
        "NODE\tIMAGE\tIMAGE ID\tSIZE\n{}\n",
        lines.join("\n")
    ))
}

/// An image's references as written (comma-separated, `<none>` if it was only ever
/// named by digest) and its ID.
fn describe_names(image: &ContainerImage) -> (String, String) {
    let names = image.names.as_deref().unwrap_or_default();
    let references: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !n.starts_with("sha256:") && !n.contains("@sha256:"))
        .collect();
    let id = names
        .iter()
        .find(|n| n.contains("@sha256:"))
        .or_else(|| names.iter().find(|n| n.starts_with("sha256:")))
        .cloned()
        .unwrap_or_else(|| "<none>".into());
    let references = if references.is_empty() {
        "<none>".to_owned()
    } else {
        references.join(",")
    };
    (references, id)
}

/// Sizes as container tools print them: `812B`, `81.2kB`, `10.5MB` (powers of 1000).
fn human_size(bytes: i64) -> String {
    let b = bytes.max(0) as f64;
    match b {
        b if b < 1e3 => format!("{b}B"),
        b if b < 1e6 => format!("{:.1}kB", b / 1e3),
        b if b < 1e9 => format!("{:.1}MB", b / 1e6),
        b => format!("{:.1}GB", b / 1e9),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn node(name: &str, images: serde_json::Value) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name}, "status": {"images": images}}))
        .unwrap()
    }

    #[test]
    fn one_line_per_image_and_node_with_references_id_and_size() {
        let m = "a".repeat(64);
        let w = "b".repeat(64);
        let nodes = [
            node(
                "node-2",
                serde_json::json!([{"names": [format!("r.io/app:1.0"), format!("r.io/app@sha256:{m}"),
                    format!("sha256:{m}"), format!("sha256:{w}")], "sizeBytes": 81234}]),
            ),
            node(
                "node-1",
                serde_json::json!([{"names": ["samples/hello.wasm", format!("sha256:{w}")],
                    "sizeBytes": 2_500_000}]),
            ),
            node("node-3", serde_json::json!([])),
        ];
        let out = render(&nodes);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("NODE  "), "{out}");
        assert!(lines[1].starts_with("node-1  "), "{out}");
        assert!(lines[1].contains("samples/hello.wasm"), "{out}");
        assert!(lines[1].contains(&format!("sha256:{w}")), "{out}");
        assert!(lines[1].ends_with("2.5MB"), "{out}");
        assert!(lines[2].contains("r.io/app:1.0"), "{out}");
        assert!(lines[2].contains(&format!("r.io/app@sha256:{m}")), "{out}");
        assert!(lines[2].ends_with("81.2kB"), "{out}");
        assert_eq!(render(&nodes[2..]), "");
    }
}
