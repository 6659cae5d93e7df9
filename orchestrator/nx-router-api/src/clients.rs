//! What one client holds open ([`Counts`]): nxd's API listener counts connections per peer
//! against `api_max_connections_per_address` and requests under way per token against
//! `api_max_requests_per_token`; the router counts connections per client against
//! `router.max_connections_per_address` and requests under way on nxd's API route against the
//! same `api_max_connections_per_address`. Clients by address are their [`client_share`].

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// Whose share a connection or request from `addr` counts against: its IPv4 address, or the
/// /64 of an IPv6 one (a host is commonly given a whole /64, RFC 7421); an IPv4-mapped IPv6
/// address counts as the IPv4 address.
pub fn client_share(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

/// How many things (connections, requests, streams) each holder (a [`client_share`], a token)
/// holds; only holders with at least one are kept.
#[derive(Debug)]
pub struct Counts<K>(Mutex<HashMap<K, usize>>);

/// [`Counts`] by client address ([`client_share`]).
pub type ClientCounts = Counts<IpAddr>;

impl<K> Default for Counts<K> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<K: Hash + Eq + Clone> Counts<K> {
    /// Counts one more for `holder` unless it already holds `max`; the count drops again with
    /// the returned slot.
    pub fn take(self: &Arc<Self>, holder: K, max: usize) -> Option<Slot<K>> {
        let mut counts = self.0.lock().expect("counts");
        let held = counts.entry(holder.clone()).or_default();
        if *held >= max {
            if *held == 0 {
                counts.remove(&holder);
            }
            return None;
        }
        *held += 1;
        Some(Slot {
            counts: Arc::clone(self),
            holder,
        })
    }
}

impl ClientCounts {
    /// [`Counts::take`] for the client of `addr` (see [`client_share`]).
    pub fn take_for(self: &Arc<Self>, addr: IpAddr, max: usize) -> Option<ClientSlot> {
        self.take(client_share(addr), max)
    }
}

/// One of a holder's connections, requests or streams, counted until it is dropped.
#[derive(Debug)]
pub struct Slot<K: Hash + Eq> {
    counts: Arc<Counts<K>>,
    holder: K,
}

/// A [`Slot`] of a client address.
pub type ClientSlot = Slot<IpAddr>;

impl<K: Hash + Eq> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().expect("counts");
        if let Some(held) = counts.get_mut(&self.holder) {
            *held -= 1;
            if *held == 0 {
                counts.remove(&self.holder);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_its_ipv4_address_or_its_ipv6_64() {
        let key = |a: &str| client_share(a.parse().unwrap()).to_string();
        assert_eq!(key("127.0.0.2"), "127.0.0.2");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(key("::1"), "::");
    }

    #[test]
    fn a_client_holds_at_most_max_until_one_is_dropped() {
        let counts = Arc::new(ClientCounts::default());
        let (a, b) = ("2001:db8::1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let held: Vec<_> = (0..3).map(|_| counts.take_for(a, 3).unwrap()).collect();
        // Another address of the same /64 is the same client.
        assert!(counts.take_for("2001:db8::2".parse().unwrap(), 3).is_none());
        assert!(counts.take_for(b, 3).is_some());
        drop(held);
        assert!(counts.take_for(a, 3).is_some());
        assert!(counts.0.lock().unwrap().is_empty(), "every slot dropped");
    }
}
