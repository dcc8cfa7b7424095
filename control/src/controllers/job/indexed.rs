//! Indexed Jobs (`completionMode: Indexed`): each of `completions` indexes, 0 to
//! completions-1, needs one pod that succeeds, as Kubernetes runs them.
//!
//! A pod's index is in its annotation and label `batch.kubernetes.io/job-completion-index`
//! (the guest reads it from `JOB_COMPLETION_INDEX`, a downward-API variable of that
//! annotation); its name starts `JOB-INDEX-` and its hostname is `JOB-INDEX`. The Job's
//! `status.completedIndexes` lists the indexes that succeeded in Kubernetes' compressed
//! form (`0-2,5`), and `status.succeeded` counts them.

use super::phase;
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeSet;

/// The annotation and label carrying a pod's completion index.
pub const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";
/// The variable a guest reads its index from.
pub const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

/// The pod's completion index, when it has a valid one below `completions`.
pub fn index_of(pod: &Pod, completions: i32) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(INDEX_KEY)?
        .parse::<i32>()
        .ok()
        .filter(|i| (0..completions).contains(i))
}

/// Parses `completedIndexes` (`1,3-5`); what does not parse is skipped.
pub fn parse(s: Option<&str>) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.unwrap_or_default().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// Formats indexes as `completedIndexes`: ascending, runs of 2+ as `a-b`.
pub fn format(indexes: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if end > start {
            format!("{start}-{end}")
        } else {
            start.to_string()
        });
    }
    parts.join(",")
}

/// The completed indexes: those recorded before and those of succeeded `pods`.
pub fn completed(recorded: Option<&str>, pods: &[Pod], completions: i32) -> BTreeSet<i32> {
    let mut done: BTreeSet<i32> = parse(recorded)
        .into_iter()
        .filter(|i| (0..completions).contains(i))
        .collect();
    done.extend(
        pods.iter()
            .filter(|p| phase(p) == "Succeeded")
            .filter_map(|p| index_of(p, completions)),
    );
    done
}

/// Which of the `active` pods to delete: those without a valid index, those whose index
/// is already completed, and all but one per index (the doomed ones first by `rank`).
pub fn surplus<'a, K: Ord>(
    active: &[&'a Pod],
    completions: i32,
    done: &BTreeSet<i32>,
    rank: impl Fn(&Pod) -> K,
) -> Vec<&'a Pod> {
    let mut sorted: Vec<&Pod> = active.to_vec();
    // Best kept last: the first of each index in reverse rank order is kept.
    sorted.sort_by_key(|p| std::cmp::Reverse(rank(p)));
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for pod in sorted {
        match index_of(pod, completions) {
            Some(i) if !done.contains(&i) && seen.insert(i) => {}
            _ => out.push(pod),
        }
    }
    out
}

/// The lowest indexes with neither a completion nor an active pod, at most `n`.
pub fn missing(active: &[&Pod], completions: i32, done: &BTreeSet<i32>, n: i32) -> Vec<i32> {
    let running: BTreeSet<i32> = active
        .iter()
        .filter_map(|p| index_of(p, completions))
        .collect();
    (0..completions)
        .filter(|i| !done.contains(i) && !running.contains(i))
        .take(usize::try_from(n.max(0)).unwrap_or(0))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, index: Option<&str>, phase: &str) -> Pod {
        let annotations = index.map(|i| json!({ INDEX_KEY: i })).unwrap_or(json!({}));
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    #[test]
    fn completed_indexes_round_trip_in_kubernetes_form() {
        let set: BTreeSet<i32> = [0, 1, 2, 5, 7, 8].into();
        assert_eq!(format(&set), "0-2,5,7-8");
        assert_eq!(parse(Some("0-2,5,7-8")), set);
        assert_eq!(format(&BTreeSet::new()), "");
        assert_eq!(parse(Some("x,3")), [3].into());
    }

    #[test]
    fn indexes_out_of_range_or_missing_do_not_count() {
        let pods = [
            pod("a", Some("0"), "Succeeded"),
            pod("b", Some("9"), "Succeeded"),
            pod("c", None, "Succeeded"),
            pod("d", Some("2"), "Failed"),
        ];
        assert_eq!(completed(Some("1"), &pods, 3), [0, 1].into());
    }

    #[test]
    fn duplicates_done_and_unindexed_pods_are_surplus_and_gaps_are_filled_lowest_first() {
        let a = pod("a", Some("0"), "Running");
        let b = pod("b", Some("0"), "Pending");
        let c = pod("c", Some("1"), "Running");
        let d = pod("d", None, "Running");
        let active = [&a, &b, &c, &d];
        let done: BTreeSet<i32> = [1].into();
        // Running ranks above Pending: the pending duplicate goes.
        let gone: Vec<&str> = surplus(&active, 4, &done, |p| phase(p) == "Running")
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(gone.len(), 3);
        assert!(gone.contains(&"b") && gone.contains(&"c") && gone.contains(&"d"));
        assert_eq!(missing(&[&a], 4, &done, 5), [2, 3]);
        assert_eq!(missing(&[&a], 4, &done, 1), [2]);
    }
}
