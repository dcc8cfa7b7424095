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

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("pod CIDR {0:?} is not an IPv4 /8 to /30 network")]
    BadCidr(String),
    #[error("pod CIDR {0} is full")]
    Exhausted(String),
}

/// Hands out addresses of one IPv4 network, skipping the network address and `.1`.
#[derive(Debug, Clone)]
pub struct PodAddresses {
    cidr: String,
    base: u32,
    size: u32,
    used: BTreeSet<u32>,
}

impl PodAddresses {
    pub fn new(cidr: &str) -> Result<Self, AddressError> {
        let bad = || AddressError::BadCidr(cidr.to_string());
        let (ip, len) = cidr.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let len: u32 = len.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&len) {
            return Err(bad());
        }
        let size = 1u32 << (32 - len);
        let base = u32::from(ip) & !(size - 1);
        Ok(PodAddresses {
            cidr: cidr.to_string(),
            base,
            size,
            used: BTreeSet::new(),
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v >= self.base && v < self.base + self.size
    }

    /// Records an address already in use (a pod adopted after a restart).
    pub fn reserve(&mut self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && self.used.insert(u32::from(ip) - self.base)
    }

    /// The lowest free address.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, AddressError> {
        let offset = (2..self.size - 1)
            .find(|o| !self.used.contains(o))
            .ok_or_else(|| AddressError::Exhausted(self.cidr.clone()))?;
        self.used.insert(offset);
        Ok(Ipv4Addr::from(self.base + offset))
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        if self.contains(ip) {
            self.used.remove(&(u32::from(ip) - self.base));
        }
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
        let mut tiny = PodAddresses::new("127.9.9.0/30").expect("cidr");
        assert_eq!(tiny.allocate(), Ok(Ipv4Addr::new(127, 9, 9, 2)));
        assert!(tiny.allocate().is_err());
        assert!(PodAddresses::new("10.0.0.0").is_err());
    }
}
