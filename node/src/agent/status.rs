//! What a pod's status says, computed from what its containers are doing.
//!
//! The worker keeps one [`ContainerRecord`] per container; [`pod_status`] turns them into
//! the `PodStatus` Kubernetes clients read (phase, conditions, containerStatuses), with the
//! same rules the kubelet uses, so `kubectl get pods` and controllers see familiar values.
//! Pure: the clock is a parameter.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminated {
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`, ...
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
}

/// What a container is doing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not running: being pulled or started (`ContainerCreating`), backing off
    /// (`CrashLoopBackOff`), or failing to pull (`ErrImagePull`).
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated(Terminated),
}

/// Everything the worker knows about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    /// `sha256:HEX` of the image once pulled.
    pub image_id: Option<String>,
    pub state: State,
    pub last_terminated: Option<Terminated>,
    pub restart_count: i32,
    /// Running, started, and passing its readiness probe (or without one).
    pub ready: bool,
    /// Running and past its startup probe (or without one).
    pub started: bool,
}

impl ContainerRecord {
    pub fn new(name: &str, image: &str) -> Self {
        ContainerRecord {
            name: name.to_string(),
            image: image.to_string(),
            image_id: None,
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            last_terminated: None,
            restart_count: 0,
            ready: false,
            started: false,
        }
    }
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn terminated_state(t: &Terminated) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: t.exit_code,
            reason: Some(t.reason.clone()),
            message: t.message.clone(),
            started_at: t.started_at.map(time),
            finished_at: Some(time(t.finished_at)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The `ContainerStatus` of one record.
pub fn container_status(r: &ContainerRecord) -> ContainerStatus {
    let state = match &r.state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        State::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(time(*started_at)),
            }),
            ..Default::default()
        },
        State::Terminated(t) => terminated_state(t),
    };
    ContainerStatus {
        name: r.name.clone(),
        image: r.image.clone(),
        image_id: r.image_id.clone().unwrap_or_default(),
        container_id: r.image_id.as_ref().map(|_| format!("wasm://{}", r.name)),
        ready: r.ready && matches!(r.state, State::Running { .. }),
        started: Some(r.started && matches!(r.state, State::Running { .. })),
        restart_count: r.restart_count,
        state: Some(state),
        last_state: Some(
            r.last_terminated
                .as_ref()
                .map(terminated_state)
                .unwrap_or_default(),
        ),
        ..Default::default()
    }
}

/// The pod phase from its containers, as the kubelet decides it.
pub fn phase(records: &[ContainerRecord], restart_policy: &str) -> &'static str {
    let (mut waiting_first, mut running, mut succeeded, mut failed) = (0, 0, 0, 0);
    for r in records {
        match &r.state {
            // Waiting after having run (back-off): the pod is still running.
            State::Waiting { .. } if r.last_terminated.is_some() => running += 1,
            State::Waiting { .. } => waiting_first += 1,
            State::Running { .. } => running += 1,
            State::Terminated(t) if t.exit_code == 0 => succeeded += 1,
            State::Terminated(_) => failed += 1,
        }
    }
    if records.is_empty() || waiting_first > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    match restart_policy {
        // Everything ended and will be restarted.
        "Always" => "Running",
        "OnFailure" if failed > 0 => "Running",
        _ if failed > 0 => "Failed",
        _ if succeeded > 0 => "Succeeded",
        _ => "Pending",
    }
}

/// What the worker knows about the pod beyond its containers.
#[derive(Debug, Clone, Default)]
pub struct PodFacts {
    pub pod_ip: Option<String>,
    pub host_ip: Option<String>,
    pub start_time: Option<Timestamp>,
    /// Set when the pod cannot start at all (for example a volume that cannot be made).
    pub message: Option<String>,
    pub reason: Option<String>,
}

fn condition(kind: &str, ok: bool, reason: Option<&str>, now: Timestamp) -> PodCondition {
    PodCondition {
        type_: kind.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.map(str::to_string),
        last_transition_time: Some(time(now)),
        ..Default::default()
    }
}

/// The pod's status. `previous` supplies condition transition times that did not change.
pub fn pod_status(
    records: &[ContainerRecord],
    restart_policy: &str,
    facts: &PodFacts,
    previous: Option<&PodStatus>,
    qos_class: Option<String>,
    now: Timestamp,
) -> PodStatus {
    let phase = phase(records, restart_policy);
    let all_ready = !records.is_empty()
        && records
            .iter()
            .all(|r| r.ready && matches!(r.state, State::Running { .. }));
    let completed = matches!(phase, "Succeeded" | "Failed");
    let not_ready_reason = if completed {
        Some("PodCompleted")
    } else {
        Some("ContainersNotReady")
    };
    let mut conditions = vec![
        condition(
            "PodReadyToStartContainers",
            facts.pod_ip.is_some(),
            None,
            now,
        ),
        condition("Initialized", true, None, now),
        condition(
            "Ready",
            all_ready,
            if all_ready { None } else { not_ready_reason },
            now,
        ),
        condition(
            "ContainersReady",
            all_ready,
            if all_ready { None } else { not_ready_reason },
            now,
        ),
        condition("PodScheduled", true, None, now),
    ];
    // Keep the transition time of a condition whose status did not change.
    if let Some(prev) = previous.and_then(|p| p.conditions.as_ref()) {
        for c in &mut conditions {
            if let Some(old) = prev
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == c.status)
            {
                c.last_transition_time = old.last_transition_time.clone();
            }
        }
    }
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: facts.host_ip.clone(),
        host_ips: facts.host_ip.clone().map(|ip| vec![HostIP { ip }]),
        pod_ip: facts.pod_ip.clone(),
        pod_ips: facts.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: facts.start_time.map(time),
        container_statuses: Some(records.iter().map(container_status).collect()),
        qos_class,
        message: facts.message.clone(),
        reason: facts.reason.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn running(name: &str) -> ContainerRecord {
        ContainerRecord {
            state: State::Running { started_at: now() },
            ready: true,
            started: true,
            ..ContainerRecord::new(name, "a.wasm")
        }
    }

    fn ended(name: &str, code: i32) -> ContainerRecord {
        ContainerRecord {
            state: State::Terminated(Terminated {
                exit_code: code,
                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                message: None,
                started_at: Some(now()),
                finished_at: now(),
            }),
            ..ContainerRecord::new(name, "a.wasm")
        }
    }

    #[test]
    fn phases_follow_the_kubelet() {
        assert_eq!(
            phase(&[ContainerRecord::new("a", "a.wasm")], "Always"),
            "Pending"
        );
        assert_eq!(phase(&[running("a"), ended("b", 0)], "Never"), "Running");
        assert_eq!(phase(&[ended("a", 0), ended("b", 0)], "Never"), "Succeeded");
        assert_eq!(phase(&[ended("a", 0), ended("b", 1)], "Never"), "Failed");
        assert_eq!(phase(&[ended("a", 1)], "OnFailure"), "Running");
        assert_eq!(phase(&[ended("a", 0)], "OnFailure"), "Succeeded");
        let mut backing_off = ContainerRecord::new("a", "a.wasm");
        backing_off.state = State::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: None,
        };
        backing_off.last_terminated = Some(Terminated {
            exit_code: 1,
            reason: "Error".into(),
            message: None,
            started_at: None,
            finished_at: now(),
        });
        assert_eq!(phase(&[backing_off], "Always"), "Running");
    }

    #[test]
    fn a_running_container_failing_its_probes_is_not_ready() {
        let facts = PodFacts {
            pod_ip: Some("127.64.0.2".into()),
            ..Default::default()
        };
        let probing = ContainerRecord {
            ready: false,
            started: false,
            ..running("a")
        };
        let s = pod_status(
            &[running("b"), probing],
            "Always",
            &facts,
            None,
            None,
            now(),
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let status = |kind: &str| {
            s.conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == kind)
                .map(|c| (c.status.clone(), c.reason.clone()))
        };
        let not_ready = Some(("False".to_string(), Some("ContainersNotReady".to_string())));
        assert_eq!(status("Ready"), not_ready);
        assert_eq!(status("ContainersReady"), not_ready);
        let flags: Vec<(bool, Option<bool>)> = s
            .container_statuses
            .iter()
            .flatten()
            .map(|c| (c.ready, c.started))
            .collect();
        assert_eq!(flags, [(true, Some(true)), (false, Some(false))]);
    }

    #[test]
    fn status_reports_readiness_and_states() {
        let facts = PodFacts {
            pod_ip: Some("127.64.0.2".into()),
            host_ip: Some("127.0.0.1".into()),
            start_time: Some(now()),
            ..Default::default()
        };
        let s = pod_status(&[running("a")], "Always", &facts, None, None, now());
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let ready = s
            .conditions
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone());
        assert_eq!(ready.as_deref(), Some("True"));
        assert_eq!(s.pod_ip.as_deref(), Some("127.64.0.2"));
        let cs = &s.container_statuses.unwrap_or_default()[0];
        assert!(cs.state.as_ref().is_some_and(|st| st.running.is_some()));

        let s = pod_status(&[ended("a", 0)], "Never", &facts, None, None, now());
        let ready = s
            .conditions
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .cloned();
        assert_eq!(
            ready.map(|c| (c.status, c.reason)),
            Some(("False".into(), Some("PodCompleted".into())))
        );
    }
}
