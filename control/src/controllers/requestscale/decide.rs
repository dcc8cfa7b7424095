//! The request-driven autoscaler's decision: a pure function of (options, current size,
//! requests in flight, memory, now).
//!
//! - **Concurrency** (`wharf.dev/target-concurrency: N`): the size is
//!   `ceil(requests in flight / N)`, at least 1 while awake and at most
//!   `wharf.dev/max-replicas` (100 by default). The raw size then goes through the HPA's
//!   stabilization and rate policies ([`hpa::decide::settle`]) with [`behavior`]: a scale
//!   up is immediate (a burst is served within one sync), a scale down waits for
//!   [`SCALE_DOWN_WINDOW`] of lower recommendations, so a lull between bursts does not
//!   drop pods that will be needed again.
//! - **Scale to zero** (`wharf.dev/scale-to-zero-after: 60s`): a Deployment that had no
//!   request in flight and took no new request for that long goes to 0 replicas; at 0,
//!   any request in flight (held by the proxies, see the node's `proxy::wake`) or a
//!   wake-up asked for by a node wakes it, to the size its demand asks for (at least 1).
//!   "Took no new request" is read from the proxies' request counters: a change of their
//!   sum between two syncs is activity, even if every request ended between them.
//! - Without a complete view of the load (a node did not answer), nothing is scaled
//!   down or put to sleep: a node that cannot be read may be the busy one.

use crate::controllers::hpa::decide::{History, settle};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::autoscaling::v2::{
    HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscalerBehavior,
};
use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::wellknown::{
    MAX_REPLICAS_ANNOTATION, SCALE_TO_ZERO_AFTER_ANNOTATION, TARGET_CONCURRENCY_ANNOTATION,
};

/// How long lower recommendations must last before a concurrency scale down.
pub const SCALE_DOWN_WINDOW: Duration = Duration::from_secs(30);
/// The size request-driven scaling stays under without `wharf.dev/max-replicas`.
pub const DEFAULT_MAX_REPLICAS: i32 = 100;

/// What a Deployment asks for through its annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Requests in flight per replica.
    pub target: Option<u32>,
    /// Idle time before sleeping at zero.
    pub idle_after: Option<Duration>,
    pub max: i32,
}

/// The options of a Deployment's annotations: `Ok(None)` when it opts into neither;
/// `Err` names the annotation that does not parse, with Kubernetes' words.
pub fn options(annotations: &BTreeMap<String, String>) -> Result<Option<Options>, String> {
    let target = annotations
        .get(TARGET_CONCURRENCY_ANNOTATION)
        .map(|v| {
            v.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    format!(
                        "metadata.annotations[{TARGET_CONCURRENCY_ANNOTATION}]: Invalid value: {v:?}: must be a positive integer"
                    )
                })
        })
        .transpose()?;
    let idle_after = annotations
        .get(SCALE_TO_ZERO_AFTER_ANNOTATION)
        .map(|v| {
            crate::api::protobuf::parse_duration(v.trim())
                .filter(|n| *n > 0)
                .and_then(|n| u64::try_from(n).ok())
                .map(Duration::from_nanos)
                .ok_or_else(|| {
                    format!(
                        "metadata.annotations[{SCALE_TO_ZERO_AFTER_ANNOTATION}]: Invalid value: {v:?}: must be a positive duration such as 60s or 5m"
                    )
                })
        })
        .transpose()?;
    let max = annotations
        .get(MAX_REPLICAS_ANNOTATION)
        .map(|v| {
            v.trim()
                .parse::<i32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    format!(
                        "metadata.annotations[{MAX_REPLICAS_ANNOTATION}]: Invalid value: {v:?}: must be a positive integer"
                    )
                })
        })
        .transpose()?
        .unwrap_or(DEFAULT_MAX_REPLICAS);
    if target.is_none() && idle_after.is_none() {
        return Ok(None);
    }
    Ok(Some(Options {
        target,
        idle_after,
        max,
    }))
}

/// The requests of a Deployment's Services, summed over every node's proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Requests taken and not yet answered (held ones included).
    pub in_flight: u64,
    /// Requests taken since the proxies started (a counter).
    pub requests: u64,
}

/// What the autoscaler remembers of one Deployment between syncs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Memory {
    /// The request counter at the last sync.
    pub last_requests: Option<u64>,
    /// When requests were last seen (in flight, or the counter moving).
    pub active_at: Option<Timestamp>,
    /// Recent recommendations and rescales, as the HPA keeps them.
    pub history: History,
}

/// Why the size changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// More requests in flight than the replicas' target.
    Busier { in_flight: u64, target: u32 },
    /// Fewer, for the whole stabilization window.
    Calmer { in_flight: u64, target: u32 },
    /// No request for the idle time: to zero.
    Idle { after: Duration },
    /// At zero, requests arrived (held by the proxies) or a node asked.
    Demand { in_flight: u64 },
}

impl Why {
    /// The Event's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Why::Busier { .. } | Why::Calmer { .. } => "SuccessfulRescale",
            Why::Idle { .. } => "ScaledToZero",
            Why::Demand { .. } => "WokenUp",
        }
    }

    /// The Event's message, for a change to `size`.
    pub fn message(&self, size: i32) -> String {
        match self {
            Why::Busier { in_flight, target } => format!(
                "New size: {size}; reason: {in_flight} requests in flight above target concurrency {target} per replica"
            ),
            Why::Calmer { in_flight, target } => format!(
                "New size: {size}; reason: {in_flight} requests in flight below target concurrency {target} per replica"
            ),
            Why::Idle { after } => format!(
                "Scaled to zero: no request for {}",
                crate::apiserver::resource_metrics::go_duration(*after)
            ),
            Why::Demand { in_flight } if *in_flight > 0 => {
                format!("Scaled up from zero to {size}: {in_flight} requests waiting")
            }
            Why::Demand { .. } => {
                format!("Scaled up from zero to {size}: a node proxy holds a request for it")
            }
        }
    }
}

/// What [`decide`] concludes.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired: i32,
    pub why: Option<Why>,
    /// The memory to keep.
    pub memory: Memory,
}

/// The stabilization and rate rules of concurrency scaling, as an HPA `behavior`: no
/// stabilization and no rate limit up (only `max` bounds a burst), Kubernetes' default
/// rate down after [`SCALE_DOWN_WINDOW`].
pub fn behavior() -> HorizontalPodAutoscalerBehavior {
    HorizontalPodAutoscalerBehavior {
        scale_up: Some(HPAScalingRules {
            stabilization_window_seconds: Some(0),
            select_policy: Some("Max".into()),
            policies: Some(vec![HPAScalingPolicy {
                type_: "Pods".into(),
                value: i32::MAX,
                period_seconds: 1,
            }]),
            tolerance: None,
        }),
        scale_down: Some(HPAScalingRules {
            stabilization_window_seconds: i32::try_from(SCALE_DOWN_WINDOW.as_secs()).ok(),
            select_policy: None,
            policies: None,
            tolerance: None,
        }),
    }
}

/// `ceil(in_flight / target)` within `[1, max]`.
fn by_concurrency(in_flight: u64, target: u32, max: i32) -> i32 {
    let n = in_flight.div_ceil(u64::from(target.max(1)));
    i32::try_from(n).unwrap_or(i32::MAX).clamp(1, max.max(1))
}

/// Decides the size of a Deployment now `current` replicas (see the module docs).
/// `load`: `None` when some node's proxy could not be read. `wake`: a node asked for a
/// wake-up since the last decision.
pub fn decide(
    options: &Options,
    current: i32,
    load: Option<Load>,
    wake: bool,
    memory: &Memory,
    now: Timestamp,
) -> Decision {
    let mut memory = memory.clone();
    let in_flight = load.map_or(0, |l| l.in_flight);
    if let Some(l) = load {
        let moved = memory.last_requests.is_some_and(|r| r != l.requests);
        if l.in_flight > 0 || moved || memory.active_at.is_none() {
            memory.active_at = Some(now);
        }
        memory.last_requests = Some(l.requests);
    }
    let keep = |memory: Memory| Decision {
        desired: current,
        why: None,
        memory,
    };
    if current == 0 {
        // Asleep (or scaled to zero by hand): only demand wakes it, and only when it
        // opted into sleeping (a Deployment put at 0 by its owner stays there).
        if options.idle_after.is_none() || (in_flight == 0 && !wake) {
            return keep(memory);
        }
        let desired = match options.target {
            Some(t) => by_concurrency(in_flight, t, options.max),
            None => 1,
        };
        memory.active_at = Some(now);
        memory.history = History::default();
        return Decision {
            desired,
            why: Some(Why::Demand { in_flight }),
            memory,
        };
    }
    let Some(load) = load else {
        return keep(memory);
    };
    if let (Some(after), Some(since)) = (options.idle_after, memory.active_at) {
        let idle = now.duration_since(since);
        if load.in_flight == 0
            && idle >= SignedDuration::try_from(after).unwrap_or(SignedDuration::MAX)
        {
            return Decision {
                desired: 0,
                why: Some(Why::Idle { after }),
                memory,
            };
        }
    }
    let Some(target) = options.target else {
        return keep(memory);
    };
    let raw = by_concurrency(load.in_flight, target, options.max);
    let desired = settle(
        raw,
        current,
        (1, options.max.max(1)),
        Some(&behavior()),
        &mut memory.history,
        now,
    );
    let why = if desired > current {
        Some(Why::Busier {
            in_flight: load.in_flight,
            target,
        })
    } else if desired < current {
        Some(Why::Calmer {
            in_flight: load.in_flight,
            target,
        })
    } else {
        None
    };
    Decision {
        desired,
        why,
        memory,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    fn t_ms(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(1_800_000_000_000 + ms).expect("time")
    }

    fn opts(target: Option<u32>, idle: Option<u64>) -> Options {
        Options {
            target,
            idle_after: idle.map(Duration::from_secs),
            max: 10,
        }
    }

    fn load(in_flight: u64, requests: u64) -> Option<Load> {
        Some(Load {
            in_flight,
            requests,
        })
    }

    /// Runs decisions in order, applying each one's size and memory.
    fn run(
        o: &Options,
        mut current: i32,
        steps: &[(Timestamp, Option<Load>, bool)],
    ) -> Vec<(i32, Option<Why>)> {
        let mut memory = Memory::default();
        let mut out = Vec::new();
        for (now, l, wake) in steps {
            let d = decide(o, current, *l, *wake, &memory, *now);
            memory = d.memory.clone();
            if d.desired != current {
                memory
                    .history
                    .record_rescale_by(Some(&behavior()), current, d.desired, *now);
            }
            current = d.desired;
            out.push((current, d.why));
        }
        out
    }

    #[test]
    fn annotations_are_read_and_checked() {
        let a = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(options(&a(&[])), Ok(None));
        assert_eq!(
            options(&a(&[
                (TARGET_CONCURRENCY_ANNOTATION, "50"),
                (SCALE_TO_ZERO_AFTER_ANNOTATION, "1m30s"),
                (MAX_REPLICAS_ANNOTATION, "7"),
            ])),
            Ok(Some(Options {
                target: Some(50),
                idle_after: Some(Duration::from_secs(90)),
                max: 7
            }))
        );
        assert_eq!(
            options(&a(&[(SCALE_TO_ZERO_AFTER_ANNOTATION, "500ms")])),
            Ok(Some(Options {
                target: None,
                idle_after: Some(Duration::from_millis(500)),
                max: DEFAULT_MAX_REPLICAS
            }))
        );
        assert_eq!(
            options(&a(&[(TARGET_CONCURRENCY_ANNOTATION, "0")])),
            Err("metadata.annotations[wharf.dev/target-concurrency]: Invalid value: \"0\": must be a positive integer".into())
        );
        assert!(
            options(&a(&[(SCALE_TO_ZERO_AFTER_ANNOTATION, "soon")]))
                .expect_err("an invalid duration")
                .contains("must be a positive duration")
        );
    }

    #[test]
    fn a_burst_scales_up_at_once_to_ceil_in_flight_over_target() {
        let o = opts(Some(50), None);
        let steps = [
            (t_ms(0), load(10, 10), false),
            // A burst: 180 in flight, ceil(180 / 50) = 4, within the same sync.
            (t_ms(500), load(180, 190), false),
            // More than max asks for: max.
            (t_ms(1000), load(5000, 5190), false),
        ];
        let got = run(&o, 1, &steps);
        assert_eq!(got[0], (1, None));
        assert_eq!(
            got[1],
            (
                4,
                Some(Why::Busier {
                    in_flight: 180,
                    target: 50
                })
            )
        );
        assert_eq!(got[2].0, 10);
    }

    #[test]
    fn a_lull_shorter_than_the_window_keeps_the_size_and_a_longer_one_scales_down() {
        let o = opts(Some(10), None);
        let mut steps = vec![(t(0), load(40, 40), false)];
        // Calm for 29 s: still 4.
        for s in 1..30 {
            steps.push((t(s), load(5, 40 + s as u64), false));
        }
        // After the window: ceil(5 / 10) = 1.
        steps.push((t(31), load(5, 80), false));
        let got = run(&o, 1, &steps);
        assert_eq!(got[0].0, 4);
        assert!(got[1..30].iter().all(|(n, _)| *n == 4), "{got:?}");
        assert_eq!(
            got[30],
            (
                1,
                Some(Why::Calmer {
                    in_flight: 5,
                    target: 10
                })
            )
        );
    }

    #[test]
    fn an_idle_deployment_sleeps_after_the_idle_time_and_requests_wake_it() {
        let o = opts(None, Some(60));
        let steps = [
            (t(0), load(0, 100), false),
            // Requests came and went between syncs: the counter moved, that is activity.
            (t(30), load(0, 105), false),
            (t(89), load(0, 105), false),
            // 60 s after the last activity: to zero.
            (t(90), load(0, 105), false),
            (t(100), load(0, 105), false),
            // A request held by a proxy: in flight at zero, wake to 1.
            (t(101), load(1, 106), false),
            // Awake: not straight back to sleep.
            (t(102), load(0, 106), false),
        ];
        let got = run(&o, 1, &steps);
        let sizes: Vec<i32> = got.iter().map(|(n, _)| *n).collect();
        assert_eq!(sizes, [1, 1, 1, 0, 0, 1, 1]);
        assert_eq!(
            got[3].1,
            Some(Why::Idle {
                after: Duration::from_secs(60)
            })
        );
        assert_eq!(got[5].1, Some(Why::Demand { in_flight: 1 }));
        assert_eq!(
            got[3].1.as_ref().map(|w| w.message(0)),
            Some("Scaled to zero: no request for 60s".into())
        );
    }

    #[test]
    fn a_node_asking_wakes_at_once_and_demand_sizes_the_wake_up() {
        // The signal alone wakes (the proxies' counters may not be read yet).
        let o = opts(None, Some(60));
        let d = decide(&o, 0, None, true, &Memory::default(), t(0));
        assert_eq!((d.desired, d.why), (1, Some(Why::Demand { in_flight: 0 })));
        // With a concurrency target, the held requests size it.
        let o = opts(Some(10), Some(60));
        let d = decide(&o, 0, load(35, 35), false, &Memory::default(), t(0));
        assert_eq!(d.desired, 4);
    }

    #[test]
    fn no_sleep_without_opting_in_nor_on_a_partial_view_nor_at_zero_by_hand() {
        // Concurrency only: never below 1.
        let o = opts(Some(10), None);
        let got = run(
            &o,
            1,
            &[(t(0), load(0, 0), false), (t(600), load(0, 0), false)],
        );
        assert!(got.iter().all(|(n, _)| *n == 1));
        // A node did not answer: no sleep.
        let o = opts(None, Some(60));
        let got = run(&o, 1, &[(t(0), load(0, 0), false), (t(600), None, false)]);
        assert_eq!(got[1], (1, None));
        // Scaled to zero by its owner without opting in: demand does not wake it.
        let o = opts(Some(10), None);
        let d = decide(&o, 0, load(5, 5), true, &Memory::default(), t(0));
        assert_eq!(d.desired, 0);
    }
}
