//! Pod addresses without root.
//!
//! On Linux all of 127.0.0.0/8 is loopback and any user may bind any address in it. Each
//! node gets a /16 of it as its `spec.podCIDR` (the control plane assigns a free one when
//! the Node is created) and gives every pod its own address there; a pod binds its
//! `containerPort` on that address, so two pods may both use 8080, as in Kubernetes, and
//! every node and the host on one machine reach every pod directly.
//!
//! The allocator is a pure structure rebuilt from the pods the node already runs (their
//! `status.podIP`), so a restarted agent keeps every pod's address.
//!
//! A socket bound to `0.0.0.0` on the host accepts on every loopback address, pod
//! addresses included: a host service on `0.0.0.0:P` answers at `POD-IP:P` wherever no pod
//! listens. So what reaches pods from outside them (the node tunnel) is confined to the
//! sockets the node's pods declare ([`PodSockets`]), not to the pod range as a whole.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Mutex, PoisonError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("pod CIDR {0:?} is not an IPv4 /8 to /30 network")]
    BadCidr(String),
    #[error("pod CIDR {0} is full")]
    Exhausted(String),
}

/// A node's pod network (`spec.podCIDR`): IPv4, /8 to /30.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodRange {
    base: u32,
    size: u32,
}

impl PodRange {
    pub fn parse(cidr: &str) -> Result<Self, AddressError> {
        let bad = || AddressError::BadCidr(cidr.to_string());
        let (ip, len) = cidr.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let len: u32 = len.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&len) {
            return Err(bad());
        }
        let size = 1u32 << (32 - len);
        let base = u32::from(ip) & !(size - 1);
        Ok(PodRange { base, size })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v >= self.base && v - self.base < self.size
    }
}

/// Hands out addresses of one IPv4 network, skipping the network address and `.1`.
#[derive(Debug, Clone)]
pub struct PodAddresses {
    cidr: String,
    range: PodRange,
    used: BTreeSet<u32>,
    /// Every offset below this one is used: where the search for the lowest free one
    /// starts, so ten thousand allocations in a row do not each walk the ones before.
    free_from: u32,
}

impl PodAddresses {
    pub fn new(cidr: &str) -> Result<Self, AddressError> {
        Ok(PodAddresses {
            cidr: cidr.to_string(),
            range: PodRange::parse(cidr)?,
            used: BTreeSet::new(),
            free_from: 2,
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.range.contains(ip)
    }

    /// Records an address already in use (a pod adopted after a restart).
    pub fn reserve(&mut self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && self.used.insert(u32::from(ip) - self.range.base)
    }

    /// The lowest free address.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, AddressError> {
        let offset = (self.free_from..self.range.size - 1)
            .find(|o| !self.used.contains(o))
            .ok_or_else(|| AddressError::Exhausted(self.cidr.clone()))?;
        self.used.insert(offset);
        self.free_from = offset + 1;
        Ok(Ipv4Addr::from(self.range.base + offset))
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        if self.contains(ip) {
            let offset = u32::from(ip) - self.range.base;
            if self.used.remove(&offset) {
                self.free_from = self.free_from.min(offset);
            }
        }
    }
}

/// The TCP `containerPort`s the containers declare (protocol unset or `TCP`, nonzero).
pub fn tcp_container_ports<'a>(
    containers: impl IntoIterator<Item = &'a k8s_openapi::api::core::v1::Container>,
) -> impl Iterator<Item = u16> {
    containers
        .into_iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| {
            p.protocol
                .as_deref()
                .unwrap_or("TCP")
                .eq_ignore_ascii_case("TCP")
        })
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .filter(|p| *p != 0)
}

/// The sockets this node's pods serve, `POD-IP:containerPort`, for every pod that has an
/// address here: what the node tunnel may connect to. Kept by the pod workers (set when a
/// pod gets its address, removed when it is released).
#[derive(Debug, Default)]
pub struct PodSockets {
    by_ip: Mutex<HashMap<Ipv4Addr, BTreeSet<u16>>>,
}

impl PodSockets {
    /// The ports the pod at `ip` serves (replacing what was recorded).
    pub fn set(&self, ip: Ipv4Addr, ports: impl IntoIterator<Item = u16>) {
        let ports = ports.into_iter().collect();
        self.lock().insert(ip, ports);
    }

    /// The pod at `ip` is gone.
    pub fn remove(&self, ip: Ipv4Addr) {
        self.lock().remove(&ip);
    }

    /// Whether `addr` is a declared port of a pod of this node.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        let IpAddr::V4(ip) = addr.ip() else {
            return false;
        };
        self.lock()
            .get(&ip)
            .is_some_and(|ports| ports.contains(&addr.port()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Ipv4Addr, BTreeSet<u16>>> {
        self.by_ip.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_lowest_free_and_reuses_released() {
        let mut a = PodAddresses::new("127.64.0.0/16").expect("cidr");
        assert_eq!(a.allocate(), Ok(Ipv4Addr::new(127, 64, 0, 2)));
        assert!(a.reserve(Ipv4Addr::new(127, 64, 0, 3)));
        assert!(!a.reserve(Ipv4Addr::new(127, 65, 0, 3)));
        assert_eq!(a.allocate(), Ok(Ipv4Addr::new(127, 64, 0, 4)));
        a.release(Ipv4Addr::new(127, 64, 0, 2));
        assert_eq!(a.allocate(), Ok(Ipv4Addr::new(127, 64, 0, 2)));
        // Released out of order, handed out lowest first again.
        a.release(Ipv4Addr::new(127, 64, 0, 4));
        a.release(Ipv4Addr::new(127, 64, 0, 2));
        assert_eq!(a.allocate(), Ok(Ipv4Addr::new(127, 64, 0, 2)));
        assert_eq!(a.allocate(), Ok(Ipv4Addr::new(127, 64, 0, 4)));
        assert_eq!(a.allocate(), Ok(Ipv4Addr::new(127, 64, 0, 5)));
        let mut tiny = PodAddresses::new("127.9.9.0/30").expect("cidr");
        assert_eq!(tiny.allocate(), Ok(Ipv4Addr::new(127, 9, 9, 2)));
        assert!(tiny.allocate().is_err());
        assert!(PodAddresses::new("10.0.0.0").is_err());
    }

    #[test]
    fn pod_sockets_are_declared_ports_of_present_pods() {
        let sockets = PodSockets::default();
        let pod = Ipv4Addr::new(127, 64, 0, 2);
        sockets.set(pod, [8080, 9090]);
        assert!(sockets.contains(SocketAddr::from((pod, 8080))));
        assert!(!sockets.contains(SocketAddr::from((pod, 22))));
        assert!(!sockets.contains(SocketAddr::from(([127, 64, 0, 200], 8080))));
        sockets.remove(pod);
        assert!(!sockets.contains(SocketAddr::from((pod, 8080))));
        let range = PodRange::parse("127.64.0.0/16").expect("cidr");
        assert!(range.contains(Ipv4Addr::new(127, 64, 255, 255)));
        assert!(!range.contains(Ipv4Addr::new(127, 65, 0, 0)));
        assert!(!range.contains(Ipv4Addr::new(127, 0, 0, 1)));
    }
}
