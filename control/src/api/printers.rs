//! The columns `kubectl get` shows for each kind, as pure functions over an object's JSON.
//!
//! Why here and not in the CLI: the same cells are what the API server answers when a
//! client asks for a `meta.k8s.io/v1` `Table` (kubectl does, and prints only NAME/AGE
//! without it), so `wharf get` and `kubectl get` against wharf show the same thing. The
//! logic follows kubectl's `pkg/printers/internalversion/printers.go` (pod STATUS from
//! container states, `<none>`, `+ N more...`, ages like `3m2s`), reading fields leniently:
//! a missing field prints as kubectl prints its zero value.
//!
//! Nothing here does I/O or reads the clock: `now` is a parameter, so tests are exact.

use super::kinds::ResourceKind;
use jiff::Timestamp;
use serde_json::{Map, Value};
use std::collections::BTreeSet;

const NONE: &str = "<none>";

pub mod stateful;

/// How a kind prints: its columns and the cells of one object. Each kind's strategy
/// names its printer ([`Strategy::printer`]); [`DEFAULT`] prints NAME and AGE.
///
/// [`Strategy::printer`]: crate::apiserver::registry::Strategy::printer
pub struct Printer {
    /// The columns without `-o wide`, NAME first (events have none: LAST SEEN first).
    pub narrow: &'static [&'static str],
    /// What `-o wide` adds after them.
    pub extra: &'static [&'static str],
    /// The `-o wide` columns when they interleave with the narrow ones (events).
    pub wide: Option<&'static [&'static str]>,
    /// The cells of one object, in the order of the columns for the same `wide`.
    pub cells: fn(&Value, bool, Timestamp) -> Vec<String>,
}

impl std::fmt::Debug for Printer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Printer")
            .field("narrow", &self.narrow)
            .finish_non_exhaustive()
    }
}

/// The column headers for `kind`.
pub fn columns(kind: &ResourceKind, wide: bool) -> Vec<&'static str> {
    kind.strategy.columns(wide)
}

/// The cells of one object, in the order of [`columns`] for the same `kind` and `wide`.
pub fn row(kind: &ResourceKind, object: &Value, wide: bool, now: Timestamp) -> Vec<String> {
    kind.strategy.cells(object, wide, now)
}

/// The object, its name and its age: what every row starts from.
fn basics(object: &Value, now: Timestamp) -> (Obj<'_>, String, String) {
    let o = Obj(object);
    let name = o.str("/metadata/name").to_string();
    let age = o.age("/metadata/creationTimestamp", now);
    (o, name, age)
}

const WORKLOAD_WIDE: &[&str] = &["CONTAINERS", "IMAGES", "SELECTOR"];

/// What `-o wide` adds to a workload's row: its template's containers and images, and
/// its selector.
fn workload_wide(o: Obj<'_>, wide: bool, mut cells: Vec<String>) -> Vec<String> {
    if wide {
        let (names, images) = containers(o.arr("/spec/template/spec/containers"));
        cells.extend([names, images, format_selector(o.get("/spec/selector"))]);
    }
    cells
}

/// NAME and AGE.
pub static DEFAULT: Printer = Printer {
    narrow: &["NAME", "AGE"],
    extra: &[],
    wide: None,
    cells: |v, _, now| {
        let (_, name, age) = basics(v, now);
        vec![name, age]
    },
};

pub static POD: Printer = Printer {
    narrow: &["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
    extra: &["IP", "NODE", "NOMINATED NODE", "READINESS GATES"],
    wide: None,
    cells: |v, wide, now| {
        let (o, name, age) = basics(v, now);
        pod_row(o, name, age, wide, now)
    },
};

pub static DEPLOYMENT: Printer = Printer {
    narrow: &["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
    extra: WORKLOAD_WIDE,
    wide: None,
    cells: |v, wide, now| {
        let (o, name, age) = basics(v, now);
        let cells = vec![
            name,
            format!(
                "{}/{}",
                o.int("/status/readyReplicas"),
                o.int_or("/spec/replicas", 1)
            ),
            o.int("/status/updatedReplicas").to_string(),
            o.int("/status/availableReplicas").to_string(),
            age,
        ];
        workload_wide(o, wide, cells)
    },
};

pub static REPLICA_SET: Printer = Printer {
    narrow: &["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
    extra: WORKLOAD_WIDE,
    wide: None,
    cells: |v, wide, now| {
        let (o, name, age) = basics(v, now);
        let cells = vec![
            name,
            o.int_or("/spec/replicas", 1).to_string(),
            o.int("/status/replicas").to_string(),
            o.int("/status/readyReplicas").to_string(),
            age,
        ];
        workload_wide(o, wide, cells)
    },
};

pub static DAEMON_SET: Printer = Printer {
    narrow: &[
        "NAME",
        "DESIRED",
        "CURRENT",
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",
        "NODE SELECTOR",
        "AGE",
    ],
    extra: WORKLOAD_WIDE,
    wide: None,
    cells: |v, wide, now| {
        let (o, name, age) = basics(v, now);
        let cells = vec![
            name,
            o.int("/status/desiredNumberScheduled").to_string(),
            o.int("/status/currentNumberScheduled").to_string(),
            o.int("/status/numberReady").to_string(),
            o.int("/status/updatedNumberScheduled").to_string(),
            o.int("/status/numberAvailable").to_string(),
            format_labels(o.get("/spec/template/spec/nodeSelector")),
            age,
        ];
        workload_wide(o, wide, cells)
    },
};

pub static JOB: Printer = Printer {
    narrow: &["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
    extra: WORKLOAD_WIDE,
    wide: None,
    cells: |v, wide, now| {
        let (o, name, age) = basics(v, now);
        let cells = vec![
            name,
            job_status(o),
            job_completions(o),
            job_duration(o, now),
            age,
        ];
        workload_wide(o, wide, cells)
    },
};

/// CronJobs, as kubectl prints them.
pub static CRON_JOB: Printer = Printer {
    narrow: &[
        "NAME",
        "SCHEDULE",
        "TIMEZONE",
        "SUSPEND",
        "ACTIVE",
        "LAST SCHEDULE",
        "AGE",
    ],
    extra: &["CONTAINERS", "IMAGES", "SELECTOR"],
    wide: None,
    cells: |v, wide, now| {
        let (o, name, created) = basics(v, now);
        let last = o
            .time("/status/lastScheduleTime")
            .map_or_else(|| "<none>".to_string(), |t| age(t, now));
        let mut cells = vec![
            name,
            o.str("/spec/schedule").to_string(),
            o.str_or("/spec/timeZone", "<none>").to_string(),
            if o.bool("/spec/suspend") {
                "True"
            } else {
                "False"
            }
            .to_string(),
            o.len("/status/active").to_string(),
            last,
            created,
        ];
        if wide {
            let (names, images) =
                containers(o.arr("/spec/jobTemplate/spec/template/spec/containers"));
            cells.extend([
                names,
                images,
                format_selector(o.get("/spec/jobTemplate/spec/selector")),
            ]);
        }
        cells
    },
};

/// PodDisruptionBudgets: the budget and how many disruptions it allows now.
pub static PDB: Printer = Printer {
    narrow: &[
        "NAME",
        "MIN AVAILABLE",
        "MAX UNAVAILABLE",
        "ALLOWED DISRUPTIONS",
        "AGE",
    ],
    extra: &[],
    wide: None,
    cells: |v, _, now| {
        let (o, name, age) = basics(v, now);
        let int_or_str = |p: &str| match o.get(p) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => "N/A".to_string(),
        };
        vec![
            name,
            int_or_str("/spec/minAvailable"),
            int_or_str("/spec/maxUnavailable"),
            o.int("/status/disruptionsAllowed").to_string(),
            age,
        ]
    },
};

/// ResourceQuotas: what is used of each hard limit, requests and limits apart.
pub static RESOURCE_QUOTA: Printer = Printer {
    narrow: &["NAME", "AGE", "REQUEST", "LIMIT"],
    extra: &[],
    wide: None,
    cells: |v, _, now| {
        let (o, name, age) = basics(v, now);
        let mut request = Vec::new();
        let mut limit = Vec::new();
        if let Some(hard) = o.map("/status/hard").or_else(|| o.map("/spec/hard")) {
            for (k, h) in hard {
                let used = o
                    .get(&format!(
                        "/status/used/{}",
                        k.replace('~', "~0").replace('/', "~1")
                    ))
                    .and_then(Value::as_str)
                    .unwrap_or("0");
                let cell = format!("{k}: {used}/{}", h.as_str().unwrap_or_default());
                if k.starts_with("limits.") {
                    limit.push(cell);
                } else {
                    request.push(cell);
                }
            }
        }
        vec![name, age, request.join(", "), limit.join(", ")]
    },
};

/// LimitRanges: when they were created.
pub static LIMIT_RANGE: Printer = Printer {
    narrow: &["NAME", "CREATED AT"],
    extra: &[],
    wide: None,
    cells: |v, _, now| {
        let (o, name, _) = basics(v, now);
        vec![name, o.str("/metadata/creationTimestamp").to_string()]
    },
};

/// PriorityClasses: the value, whether it is the default, the preemption policy.
pub static PRIORITY_CLASS: Printer = Printer {
    narrow: &["NAME", "VALUE", "GLOBAL-DEFAULT", "AGE", "PREEMPTIONPOLICY"],
    extra: &[],
    wide: None,
    cells: |v, _, now| {
        let (o, name, age) = basics(v, now);
        vec![
            name,
            o.int("/value").to_string(),
            o.bool("/globalDefault").to_string(),
            age,
            o.str_or("/preemptionPolicy", "PreemptLowerPriority")
                .to_string(),
        ]
    },
};

pub static SERVICE: Printer = Printer {
    narrow: &[
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "AGE",
    ],
    extra: &["SELECTOR"],
    wide: None,
    cells: |v, wide, now| {
        let (o, name, age) = basics(v, now);
        let mut cells = vec![
            name,
            o.str_or("/spec/type", "ClusterIP").to_string(),
            o.str_or("/spec/clusterIP", NONE).to_string(),
            service_external_ip(o, wide),
            service_ports(o),
            age,
        ];
        if wide {
            cells.push(format_labels(o.get("/spec/selector")));
        }
        cells
    },
};

pub static ENDPOINTS: Printer = Printer {
    narrow: &["NAME", "ENDPOINTS", "AGE"],
    extra: &[],
    wide: None,
    cells: |v, _, now| {
        let (o, name, age) = basics(v, now);
        vec![name, endpoints(o), age]
    },
};

pub static ENDPOINT_SLICE: Printer = Printer {
    narrow: &["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
    extra: &[],
    wide: None,
    cells: |v, _, now| {
        let (o, name, age) = basics(v, now);
        vec![
            name,
            o.str("/addressType").to_string(),
            list_with_more(
                o.arr("/ports").iter().map(|p| {
                    let port = Obj(p);
                    match p.get("port").and_then(Value::as_i64) {
                        Some(n) => n.to_string(),
                        None => port.str_or("/name", "*").to_string(),
                    }
                }),
                "<unset>",
            ),
            list_with_more(
                o.arr("/endpoints")
                    .iter()
                    .flat_map(|e| Obj(e).arr("/addresses"))
                    .filter_map(|a| a.as_str().map(str::to_string)),
                "<unset>",
            ),
            age,
        ]
    },
};

pub static NODE: Printer = Printer {
    narrow: &["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
    extra: &[
        "INTERNAL-IP",
        "EXTERNAL-IP",
        "OS-IMAGE",
        "KERNEL-VERSION",
        "CONTAINER-RUNTIME",
    ],
    wide: None,
    cells: |v, wide, now| {
        let (o, name, age) = basics(v, now);
        let mut cells = vec![
            name,
            node_status(o),
            node_roles(o),
            age,
            o.str("/status/nodeInfo/kubeletVersion").to_string(),
        ];
        if wide {
            let address = |ty: &str| {
                o.arr("/status/addresses")
                    .iter()
                    .find(|a| a.get("type").and_then(Value::as_str) == Some(ty))
                    .map_or(NONE, |a| Obj(a).str_or("/address", NONE))
                    .to_string()
            };
            cells.extend([
                address("InternalIP"),
                address("ExternalIP"),
                o.str_or("/status/nodeInfo/osImage", "<unknown>")
                    .to_string(),
                o.str_or("/status/nodeInfo/kernelVersion", "<unknown>")
                    .to_string(),
                o.str_or("/status/nodeInfo/containerRuntimeVersion", "<unknown>")
                    .to_string(),
            ]);
        }
        cells
    },
};

pub static NAMESPACE: Printer = Printer {
    narrow: &["NAME", "STATUS", "AGE"],
    extra: &[],
    wide: None,
    cells: |v, _, now| {
        let (o, name, age) = basics(v, now);
        vec![name, o.str("/status/phase").to_string(), age]
    },
};

pub static CONFIG_MAP: Printer = Printer {
    narrow: &["NAME", "DATA", "AGE"],
    extra: &[],
    wide: None,
    cells: |v, _, now| {
        let (o, name, age) = basics(v, now);
        vec![
            name,
            (o.len("/data") + o.len("/binaryData")).to_string(),
            age,
        ]
    },
};

pub static SECRET: Printer = Printer {
    narrow: &["NAME", "TYPE", "DATA", "AGE"],
    extra: &[],
    wide: None,
    cells: |v, _, now| {
        let (o, name, age) = basics(v, now);
        vec![
            name,
            o.str("/type").to_string(),
            o.len("/data").to_string(),
            age,
        ]
    },
};

/// kubectl's columns for ServiceAccounts: how many token Secrets it lists.
pub static SERVICE_ACCOUNT: Printer = Printer {
    narrow: &["NAME", "SECRETS", "AGE"],
    extra: &[],
    wide: None,
    cells: |v, _, now| {
        let (o, name, age) = basics(v, now);
        vec![name, o.len("/secrets").to_string(), age]
    },
};

pub static LEASE: Printer = Printer {
    narrow: &["NAME", "HOLDER", "AGE"],
    extra: &[],
    wide: None,
    cells: |v, _, now| {
        let (o, name, age) = basics(v, now);
        vec![name, o.str("/spec/holderIdentity").to_string(), age]
    },
};

/// Ingresses, as kubectl prints them: class, hosts, load balancer addresses, ports.
pub static INGRESS: Printer = Printer {
    narrow: &["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"],
    extra: &[],
    wide: None,
    cells: |v, _, now| {
        let (o, name, age) = basics(v, now);
        let class = match o.str("/spec/ingressClassName") {
            "" => "<none>".to_string(),
            c => c.to_string(),
        };
        let list = |ptr: &str, field: &str| -> Vec<String> {
            v.pointer(ptr)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|x| x.get(field).and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        };
        let hosts = list("/spec/rules", "host");
        let hosts = if hosts.is_empty() {
            "*".to_string()
        } else {
            hosts.join(",")
        };
        let address = list("/status/loadBalancer/ingress", "ip").join(",");
        let tls = v
            .pointer("/spec/tls")
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty());
        let ports = if tls { "80, 443" } else { "80" };
        vec![name, class, hosts, address, ports.to_string(), age]
    },
};

/// IngressClasses: the controller that serves them.
pub static INGRESS_CLASS: Printer = Printer {
    narrow: &["NAME", "CONTROLLER", "PARAMETERS", "AGE"],
    extra: &[],
    wide: None,
    cells: |v, _, now| {
        let (o, name, age) = basics(v, now);
        vec![
            name,
            o.str("/spec/controller").to_string(),
            "<none>".to_string(),
            age,
        ]
    },
};

/// Roles and ClusterRoles, as kubectl prints them: when they were created.
pub static ROLE: Printer = Printer {
    narrow: &["NAME", "CREATED AT"],
    extra: &[],
    wide: None,
    cells: |v, _, now| {
        let (o, name, _) = basics(v, now);
        vec![name, o.str("/metadata/creationTimestamp").to_string()]
    },
};

/// RoleBindings and ClusterRoleBindings: the role, and with `-o wide` the subjects by
/// kind (service accounts as `NAMESPACE/NAME`).
pub static ROLE_BINDING: Printer = Printer {
    narrow: &["NAME", "ROLE", "AGE"],
    extra: &["USERS", "GROUPS", "SERVICEACCOUNTS"],
    wide: None,
    cells: |v, wide, now| {
        let (o, name, age) = basics(v, now);
        let role = format!("{}/{}", o.str("/roleRef/kind"), o.str("/roleRef/name"));
        let mut cells = vec![name, role, age];
        if wide {
            let subjects = o.arr("/subjects");
            let of = |kind: &str| {
                subjects
                    .iter()
                    .map(Obj)
                    .filter(|s| s.str("/kind") == kind)
                    .map(|s| match kind {
                        "ServiceAccount" => format!("{}/{}", s.str("/namespace"), s.str("/name")),
                        _ => s.str("/name").to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            cells.extend([of("User"), of("Group"), of("ServiceAccount")]);
        }
        cells
    },
};

/// An APIService: `Local` or the Service that serves it, and whether it is available
/// (with the reason when it is not), as kubectl prints them.
pub static API_SERVICE: Printer = Printer {
    narrow: &["NAME", "SERVICE", "AVAILABLE", "AGE"],
    extra: &[],
    wide: None,
    cells: |v, _, now| {
        let (o, name, age) = basics(v, now);
        let service = match o.get("/spec/service") {
            None => "Local".to_string(),
            Some(_) => format!(
                "{}/{}",
                o.str("/spec/service/namespace"),
                o.str("/spec/service/name")
            ),
        };
        let available = o
            .arr("/status/conditions")
            .iter()
            .map(Obj)
            .find(|c| c.str("/type") == "Available")
            .map_or_else(
                || "Unknown".to_string(),
                |c| match c.str("/status") {
                    "False" => format!("False ({})", c.str("/reason")),
                    s => s.to_string(),
                },
            );
        vec![name, service, available, age]
    },
};

/// kubectl's wide event columns interleave with the narrow ones.
pub static EVENT: Printer = Printer {
    narrow: &["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
    extra: &[],
    wide: Some(&[
        "LAST SEEN",
        "TYPE",
        "REASON",
        "OBJECT",
        "SUBOBJECT",
        "SOURCE",
        "MESSAGE",
        "FIRST SEEN",
        "COUNT",
        "NAME",
    ]),
    cells: |v, wide, now| {
        let (o, name, _) = basics(v, now);
        event_row(o, name, wide, now)
    },
};

/// How long ago `created` was, as kubectl prints ages: `45s`, `3m2s`, `14m`, `125m`,
/// `3h5m`, `20h`, `3d4h`, `40d`, `2y3d` (apimachinery's `duration.HumanDuration`).
pub fn age(created: Timestamp, now: Timestamp) -> String {
    human_duration(now.as_second() - created.as_second())
}

/// kubectl's `HumanDuration` over whole seconds.
pub fn human_duration(seconds: i64) -> String {
    // A clock up to a second ahead of ours still reads as "now".
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return with_rest(minutes, "m", seconds % 60, "s");
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return with_rest(hours, "h", minutes % 60, "m");
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return with_rest(days, "d", hours % 24, "h");
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    if hours < 24 * 365 * 8 {
        return with_rest(days / 365, "y", days % 365, "d");
    }
    format!("{}y", days / 365)
}

fn with_rest(big: i64, big_unit: &str, rest: i64, rest_unit: &str) -> String {
    if rest == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit}{rest}{rest_unit}")
    }
}

/// Lenient accessors over an object's JSON by JSON pointer.
#[derive(Clone, Copy)]
struct Obj<'a>(&'a Value);

impl<'a> Obj<'a> {
    fn get(self, ptr: &str) -> Option<&'a Value> {
        self.0.pointer(ptr).filter(|v| !v.is_null())
    }
    fn str(self, ptr: &str) -> &'a str {
        self.str_or(ptr, "")
    }
    /// The string at `ptr`, or `default` when missing or empty.
    fn str_or(self, ptr: &str, default: &'a str) -> &'a str {
        match self.get(ptr).and_then(Value::as_str) {
            Some(s) if !s.is_empty() => s,
            _ => default,
        }
    }
    fn int(self, ptr: &str) -> i64 {
        self.int_or(ptr, 0)
    }
    fn int_or(self, ptr: &str, default: i64) -> i64 {
        self.get(ptr).and_then(Value::as_i64).unwrap_or(default)
    }
    fn bool(self, ptr: &str) -> bool {
        self.get(ptr).and_then(Value::as_bool).unwrap_or(false)
    }
    fn arr(self, ptr: &str) -> &'a [Value] {
        self.get(ptr)
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }
    fn map(self, ptr: &str) -> Option<&'a Map<String, Value>> {
        self.get(ptr).and_then(Value::as_object)
    }
    /// Entries of the map or array at `ptr`.
    fn len(self, ptr: &str) -> usize {
        match self.get(ptr) {
            Some(Value::Object(m)) => m.len(),
            Some(Value::Array(a)) => a.len(),
            _ => 0,
        }
    }
    fn time(self, ptr: &str) -> Option<Timestamp> {
        self.get(ptr)?.as_str()?.parse().ok()
    }
    fn age(self, ptr: &str, now: Timestamp) -> String {
        self.time(ptr)
            .map_or_else(|| "<unknown>".to_string(), |t| age(t, now))
    }
    /// The `status` of the condition of type `ty` under `ptr`, if there is one.
    fn condition(self, ptr: &str, ty: &str) -> Option<&'a str> {
        self.arr(ptr)
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
            .map(|c| Obj(c).str("/status"))
    }
}

fn pod_row(o: Obj<'_>, name: String, age: String, wide: bool, now: Timestamp) -> Vec<String> {
    let phase = o.str("/status/phase");
    let mut reason = o.str_or("/status/reason", phase).to_string();
    let scheduling_gated = o.arr("/status/conditions").iter().any(|c| {
        Obj(c).str("/type") == "PodScheduled" && Obj(c).str("/reason") == "SchedulingGated"
    });
    if scheduling_gated {
        reason = "SchedulingGated".to_string();
    }

    // Init containers with restartPolicy Always are sidecars: they count as containers.
    let init_specs = o.arr("/spec/initContainers");
    let is_sidecar = |status: Obj<'_>| {
        init_specs.iter().any(|c| {
            Obj(c).str("/name") == status.str("/name") && Obj(c).str("/restartPolicy") == "Always"
        })
    };
    let total = o.arr("/spec/containers").len()
        + init_specs
            .iter()
            .filter(|c| Obj(c).str("/restartPolicy") == "Always")
            .count();
    let mut ready = 0;
    let mut restarts = 0;
    let mut last_restart: Option<Timestamp> = None;
    let mut sidecar_restarts = 0;
    let mut sidecar_last_restart: Option<Timestamp> = None;
    let bump = |last: &mut Option<Timestamp>, c: Obj<'_>| {
        if let Some(t) = c.time("/lastState/terminated/finishedAt") {
            *last = Some(last.map_or(t, |l| l.max(t)));
        }
    };

    let mut initializing = false;
    let init_statuses = o.arr("/status/initContainerStatuses");
    for (i, c) in init_statuses.iter().map(Obj).enumerate() {
        restarts += c.int("/restartCount");
        bump(&mut last_restart, c);
        let sidecar = is_sidecar(c);
        if sidecar {
            sidecar_restarts += c.int("/restartCount");
            bump(&mut sidecar_last_restart, c);
        }
        let terminated = c.get("/state/terminated").map(Obj);
        if terminated.is_some_and(|t| t.int("/exitCode") == 0) {
            continue;
        }
        if sidecar && c.bool("/started") {
            if c.bool("/ready") {
                ready += 1;
            }
            continue;
        }
        reason = if let Some(t) = terminated {
            format!("Init:{}", terminated_reason(t))
        } else {
            match c.str("/state/waiting/reason") {
                "" | "PodInitializing" => format!("Init:{i}/{}", init_specs.len()),
                waiting => format!("Init:{waiting}"),
            }
        };
        initializing = true;
        break;
    }

    if !initializing || o.condition("/status/conditions", "Initialized") == Some("True") {
        restarts = sidecar_restarts;
        last_restart = sidecar_last_restart;
        let mut has_running = false;
        for c in o.arr("/status/containerStatuses").iter().rev().map(Obj) {
            restarts += c.int("/restartCount");
            bump(&mut last_restart, c);
            let waiting = c.str("/state/waiting/reason");
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if let Some(t) = c.get("/state/terminated").map(Obj) {
                reason = terminated_reason(t);
            } else if c.bool("/ready") && c.get("/state/running").is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = match o.condition("/status/conditions", "Ready") {
                Some("True") => "Running".to_string(),
                _ => "NotReady".to_string(),
            };
        }
    }

    if o.get("/metadata/deletionTimestamp").is_some() {
        if o.str("/status/reason") == "NodeLost" {
            reason = "Unknown".to_string();
        } else if !matches!(phase, "Succeeded" | "Failed") {
            reason = "Terminating".to_string();
        }
    }

    let restarts = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", self::age(t, now)),
        _ => restarts.to_string(),
    };
    let mut cells = vec![name, format!("{ready}/{total}"), reason, restarts, age];
    if wide {
        let ip = o
            .arr("/status/podIPs")
            .first()
            .map_or_else(|| o.str("/status/podIP"), |p| Obj(p).str("/ip"));
        let gates = o.arr("/spec/readinessGates");
        let gates = if gates.is_empty() {
            NONE.to_string()
        } else {
            let met = gates
                .iter()
                .filter(|g| {
                    o.condition("/status/conditions", Obj(g).str("/conditionType")) == Some("True")
                })
                .count();
            format!("{met}/{}", gates.len())
        };
        cells.extend([
            or_none(ip),
            o.str_or("/spec/nodeName", NONE).to_string(),
            o.str_or("/status/nominatedNodeName", NONE).to_string(),
            gates,
        ]);
    }
    cells
}

/// `reason`, else `Signal:N` or `ExitCode:N`, of a terminated container state.
fn terminated_reason(t: Obj<'_>) -> String {
    match (t.str("/reason"), t.int("/signal")) {
        ("", 0) => format!("ExitCode:{}", t.int("/exitCode")),
        ("", signal) => format!("Signal:{signal}"),
        (reason, _) => reason.to_string(),
    }
}

fn event_row(o: Obj<'_>, name: String, wide: bool, now: Timestamp) -> Vec<String> {
    let first = o
        .time("/firstTimestamp")
        .or_else(|| o.time("/eventTime"))
        .map_or_else(|| "<unknown>".to_string(), |t| age(t, now));
    let mut last = o
        .time("/lastTimestamp")
        .map_or_else(|| first.clone(), |t| age(t, now));
    let mut count = o.int("/count");
    if o.get("/series").is_some() {
        last = o.age("/series/lastObservedTime", now);
        count = o.int("/series/count");
    } else if count == 0 {
        count = 1;
    }
    let target = match (
        o.str("/involvedObject/kind").to_lowercase(),
        o.str("/involvedObject/name"),
    ) {
        (kind, "") => kind,
        (kind, name) => format!("{kind}/{name}"),
    };
    let message = o.str("/message").trim().to_string();
    let (ty, reason) = (o.str("/type").to_string(), o.str("/reason").to_string());
    if !wide {
        return vec![last, ty, reason, target, message];
    }
    let source = match (o.str("/source/component"), o.str("/source/host")) {
        ("", _) => match (o.str("/reportingComponent"), o.str("/reportingInstance")) {
            (c, "") => c.to_string(),
            (c, i) => format!("{c}, {i}"),
        },
        (c, "") => c.to_string(),
        (c, h) => format!("{c}, {h}"),
    };
    vec![
        last,
        ty,
        reason,
        target,
        o.str("/involvedObject/fieldPath").to_string(),
        source,
        message,
        first,
        count.to_string(),
        name,
    ]
}

fn job_status(o: Obj<'_>) -> String {
    let has = |ty: &str| o.condition("/status/conditions", ty) == Some("True");
    let status = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if o.get("/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    status.to_string()
}

fn job_completions(o: Obj<'_>) -> String {
    let succeeded = o.int("/status/succeeded");
    match (
        o.get("/spec/completions").and_then(Value::as_i64),
        o.int("/spec/parallelism"),
    ) {
        (Some(completions), _) => format!("{succeeded}/{completions}"),
        (None, parallelism) if parallelism > 1 => format!("{succeeded}/1 of {parallelism}"),
        (None, _) => format!("{succeeded}/1"),
    }
}

fn job_duration(o: Obj<'_>, now: Timestamp) -> String {
    match (
        o.time("/status/startTime"),
        o.time("/status/completionTime"),
    ) {
        (None, _) => String::new(),
        (Some(start), None) => age(start, now),
        (Some(start), Some(end)) => age(start, end),
    }
}

fn service_external_ip(o: Obj<'_>, wide: bool) -> String {
    let external: Vec<&str> = o
        .arr("/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match o.str_or("/spec/type", "ClusterIP") {
        "ClusterIP" | "NodePort" => or_none(&external.join(",")),
        "LoadBalancer" => {
            let mut ingress = o
                .arr("/status/loadBalancer/ingress")
                .iter()
                .map(|i| Obj(i).str_or("/ip", Obj(i).str("/hostname")))
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(",");
            if !wide && ingress.chars().count() > 16 {
                ingress = format!("{}...", ingress.chars().take(13).collect::<String>());
            }
            let all: Vec<&str> = std::iter::once(ingress.as_str())
                .filter(|s| !s.is_empty())
                .chain(external)
                .collect();
            if all.is_empty() {
                "<pending>".to_string()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => o.str("/spec/externalName").to_string(),
        _ => "<unknown>".to_string(),
    }
}

fn service_ports(o: Obj<'_>) -> String {
    let ports: Vec<String> = o
        .arr("/spec/ports")
        .iter()
        .map(|p| {
            let p = Obj(p);
            let protocol = p.str_or("/protocol", "TCP");
            match p.int("/nodePort") {
                0 => format!("{}/{protocol}", p.int("/port")),
                node_port => format!("{}:{node_port}/{protocol}", p.int("/port")),
            }
        })
        .collect();
    or_none(&ports.join(","))
}

/// `ip:port` for every address and port of every subset, the first three shown.
fn endpoints(o: Obj<'_>) -> String {
    let addresses = o.arr("/subsets").iter().map(Obj).flat_map(|subset| {
        let ips: Vec<&str> = subset
            .arr("/addresses")
            .iter()
            .map(|a| Obj(a).str("/ip"))
            .collect();
        let ports: Vec<i64> = subset
            .arr("/ports")
            .iter()
            .map(|p| Obj(p).int("/port"))
            .collect();
        if ports.is_empty() {
            ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>()
        } else {
            ports
                .iter()
                .flat_map(|port| ips.iter().map(move |ip| join_host_port(ip, *port)))
                .collect()
        }
    });
    list_with_more(addresses, NONE)
}

fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The first three items joined with `,`, then ` + N more...`; `empty` when there are none.
fn list_with_more(items: impl Iterator<Item = String>, empty: &str) -> String {
    const MAX: usize = 3;
    let mut shown = Vec::with_capacity(MAX);
    let mut count = 0;
    for item in items {
        if shown.len() < MAX {
            shown.push(item);
        }
        count += 1;
    }
    match count {
        0 => empty.to_string(),
        n if n > MAX => format!("{} + {} more...", shown.join(","), n - MAX),
        _ => shown.join(","),
    }
}

fn node_status(o: Obj<'_>) -> String {
    let mut status = match o.condition("/status/conditions", "Ready") {
        Some("True") => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }
    .to_string();
    if o.bool("/spec/unschedulable") {
        status.push_str(",SchedulingDisabled");
    }
    status
}

fn node_roles(o: Obj<'_>) -> String {
    let roles: BTreeSet<&str> = o
        .map("/metadata/labels")
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| match k.strip_prefix("node-role.kubernetes.io/") {
            Some(role) => Some(role),
            None if k == "kubernetes.io/role" => v.as_str(),
            None => None,
        })
        .filter(|r| !r.is_empty())
        .collect();
    or_none(&roles.into_iter().collect::<Vec<_>>().join(","))
}

/// Container names and images of a pod template, each joined with `,`.
fn containers(containers: &[Value]) -> (String, String) {
    let field = |f: &str| {
        containers
            .iter()
            .map(|c| Obj(c).str(f))
            .collect::<Vec<_>>()
            .join(",")
    };
    (field("/name"), field("/image"))
}

/// A label map as `a=b,c=d`, sorted by key.
fn format_labels(labels: Option<&Value>) -> String {
    let mut pairs: Vec<String> = labels
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    pairs.sort();
    or_none(&pairs.join(","))
}

/// A `LabelSelector` (matchLabels and matchExpressions) in selector syntax, sorted by key;
/// a plain label map (a ReplicationController's or a Service's selector) as equalities.
pub fn format_selector(selector: Option<&Value>) -> String {
    let Some(selector) = selector else {
        return NONE.to_string();
    };
    if selector.get("matchLabels").is_none() && selector.get("matchExpressions").is_none() {
        return format_labels(Some(selector));
    }
    let selector = Obj(selector);
    let mut reqs: Vec<(String, String)> = selector
        .map("/matchLabels")
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), format!("{k}={}", v.as_str().unwrap_or_default())))
        .collect();
    for expr in selector.arr("/matchExpressions").iter().map(Obj) {
        let key = expr.str("/key");
        let mut values: Vec<&str> = expr
            .arr("/values")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        values.sort_unstable();
        let text = match expr.str("/operator") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            other => format!("{key} {other} ({})", values.join(",")),
        };
        reqs.push((key.to_string(), text));
    }
    reqs.sort();
    or_none(
        &reqs
            .into_iter()
            .map(|(_, t)| t)
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn or_none(s: &str) -> String {
    if s.is_empty() { NONE } else { s }.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::api::kinds::resolve;
    use serde_json::json;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const NOW: &str = "2025-01-10T12:00:00Z";

    #[test]
    fn ages_like_kubectl() {
        let cases = [
            (0, "0s"),
            (-1, "0s"),
            (-5, "<invalid>"),
            (5, "5s"),
            (119, "119s"),
            (182, "3m2s"),
            (300, "5m"),
            (14 * 60 + 30, "14m"),
            (179 * 60, "179m"),
            (2 * 3600 + 5 * 60, "125m"),
            (3 * 3600 + 5 * 60, "3h5m"),
            (5 * 3600, "5h"),
            (20 * 3600, "20h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (3 * 86400, "3d"),
            (40 * 86400, "40d"),
            (2 * 365 * 86400 + 3 * 86400, "2y3d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (seconds, want) in cases {
            assert_eq!(human_duration(seconds), want, "{seconds}s");
        }
        assert_eq!(age(at("2025-01-10T11:46:00Z"), at(NOW)), "14m");
    }

    #[test]
    fn pod_waiting_reason_wins_over_phase() {
        let pod = json!({
            "metadata": {"name": "web-1", "creationTimestamp": "2025-01-10T11:57:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "node-1"},
            "status": {
                "phase": "Pending",
                "podIP": "127.1.0.5",
                "containerStatuses": [
                    {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                    {"name": "b", "ready": false, "restartCount": 2,
                     "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                     "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2025-01-10T11:59:30Z"}}}
                ]
            }
        });
        let kind = resolve("pod").unwrap();
        assert_eq!(
            row(kind, &pod, false, at(NOW)),
            ["web-1", "1/2", "CrashLoopBackOff", "2 (30s ago)", "3m"]
        );
        assert_eq!(
            columns(kind, true).len(),
            row(kind, &pod, true, at(NOW)).len()
        );
        assert_eq!(
            row(kind, &pod, true, at(NOW))[5..],
            ["127.1.0.5", "node-1", "<none>", "<none>"]
        );
    }

    #[test]
    fn pod_status_variants() {
        let kind = resolve("pod").unwrap();
        let status = |pod: Value| row(kind, &pod, false, at(NOW))[2].clone();
        let running = json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Running",
            "containerStatuses": [{"name": "a", "ready": true, "state": {"running": {}}}]}});
        assert_eq!(status(running.clone()), "Running");
        let mut deleting = running;
        deleting["metadata"] = json!({"deletionTimestamp": NOW});
        assert_eq!(status(deleting), "Terminating");
        assert_eq!(
            status(json!({"status": {"phase": "Failed", "containerStatuses": [
                {"name": "a", "state": {"terminated": {"exitCode": 3}}}]}})),
            "ExitCode:3"
        );
        assert_eq!(
            status(
                json!({"spec": {"initContainers": [{"name": "i"}]}, "status": {"phase": "Pending",
                "initContainerStatuses": [{"name": "i", "state": {"running": {}}}]}})
            ),
            "Init:0/1"
        );
        assert_eq!(status(json!({"status": {"phase": "Pending"}})), "Pending");
    }

    #[test]
    fn deployment_service_and_endpoints_rows() {
        let now = at(NOW);
        let deploy = json!({
            "metadata": {"name": "web", "creationTimestamp": "2025-01-10T10:00:00Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}]},
                "template": {"spec": {"containers": [{"name": "w", "image": "web.wasm"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}
        });
        assert_eq!(
            row(resolve("deploy").unwrap(), &deploy, true, now),
            [
                "web",
                "2/3",
                "3",
                "2",
                "120m",
                "w",
                "web.wasm",
                "app=web,tier in (a,b)"
            ]
        );
        let svc = json!({
            "metadata": {"name": "web"},
            "spec": {"clusterIP": "127.64.0.10", "selector": {"app": "web"},
                "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP", "nodePort": 30053}]}
        });
        assert_eq!(
            row(resolve("svc").unwrap(), &svc, true, now),
            [
                "web",
                "ClusterIP",
                "127.64.0.10",
                "<none>",
                "80/TCP,53:30053/UDP",
                "<unknown>",
                "app=web"
            ]
        );
        let ep = json!({"metadata": {"name": "web"}, "subsets": [{
            "addresses": [{"ip": "127.1.0.1"}, {"ip": "127.1.0.2"}],
            "ports": [{"port": 8080}, {"port": 9090}]}]});
        assert_eq!(
            row(resolve("ep").unwrap(), &ep, false, now)[1],
            "127.1.0.1:8080,127.1.0.2:8080,127.1.0.1:9090 + 1 more..."
        );
    }

    #[test]
    fn every_kind_has_as_many_cells_as_columns() {
        let empty = json!({});
        for kind in crate::api::kinds::KINDS {
            for wide in [false, true] {
                assert_eq!(
                    columns(kind, wide).len(),
                    row(kind, &empty, wide, at(NOW)).len(),
                    "{} wide={wide}",
                    kind.kind
                );
            }
        }
    }

    #[test]
    fn role_bindings_and_api_services_print_as_kubectl() {
        let rb = json!({"metadata": {"name": "admins", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "roleRef": {"kind": "ClusterRole", "name": "admin"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "Group", "name": "ops"},
                {"kind": "ServiceAccount", "name": "ci", "namespace": "build"}]});
        let kind = resolve("rolebindings").unwrap();
        assert_eq!(
            row(kind, &rb, true, at(NOW))[..2],
            ["admins", "ClusterRole/admin"]
        );
        assert_eq!(
            row(kind, &rb, true, at(NOW))[3..],
            ["alice", "ops", "build/ci"]
        );
        let role = resolve("clusterroles").unwrap();
        assert_eq!(
            row(role, &rb, false, at(NOW)),
            ["admins", "2026-01-01T00:00:00Z"]
        );
        let svc = json!({"metadata": {"name": "v1.apps"}, "spec": {"group": "apps"},
            "status": {"conditions": [{"type": "Available", "status": "True"}]}});
        let api = resolve("apiservices").unwrap();
        assert_eq!(
            row(api, &svc, false, at(NOW))[..3],
            ["v1.apps", "Local", "True"]
        );
        let remote = json!({"metadata": {"name": "v1.x.io"},
            "spec": {"service": {"namespace": "x", "name": "api"}},
            "status": {"conditions": [{"type": "Available", "status": "False", "reason": "ServiceNotProxied"}]}});
        assert_eq!(
            row(api, &remote, false, at(NOW))[1..3],
            ["x/api", "False (ServiceNotProxied)"]
        );
    }
}
