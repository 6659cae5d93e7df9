//! Connections that have not authenticated yet ("startups", as OpenSSH's `MaxStartups` calls
//! them, sshd_config(5)): at most `sftp.max_startups` at once, so that anyone without a key
//! holds at most that many of `sftp.max_connections` and key holders keep the rest.
//!
//! When the pool is full a new connection is not refused (a flood would then lock every key
//! holder out, attacker s12 M3: 20 addresses held all 256 connections): it takes the place of
//! the oldest startup of the client that holds the most (its IPv4 address or IPv6 /64,
//! `client_share`). A key holder connecting from an address of its own holds one startup; a
//! flood from fewer addresses than `sftp.max_startups` holds two or more on one of them
//! (pigeonhole), so the flood's own connections make way and the key holder's never does.
//! From more addresses (IPv6 /64s are plentiful) the flood holds one each, ties go to the
//! oldest, and a client slower to authenticate than the flood is to reconnect can be pushed
//! out: raise `sftp.max_startups`, or filter such sources before nxd.

use nx_orchestrator::router::client_share;
use std::collections::BTreeMap;
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::{Arc, Mutex};

/// The startups open now.
pub(super) struct Startups {
    max: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    /// Ids are handed out in order: the first entry is the oldest.
    by_id: BTreeMap<u64, Startup>,
    next_id: u64,
}

struct Startup {
    client: IpAddr,
    /// A descriptor of the connection's socket, to close it from outside.
    socket: Arc<TcpStream>,
}

/// A startup's place in the pool, given back when dropped (the connection authenticated or
/// ended).
pub(super) struct Place {
    startups: Arc<Startups>,
    id: u64,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.startups.lock().by_id.remove(&self.id);
    }
}

impl Startups {
    /// A pool of at most `max` (≥ 1) startups.
    pub(super) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new connection from `peer` whose socket `socket` is: its place, and the
    /// client whose oldest startup was shut down to make room, if the pool was full.
    pub(super) fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
        socket: Arc<TcpStream>,
    ) -> (Place, Option<IpAddr>) {
        let mut open = self.lock();
        let evicted = if open.by_id.len() >= self.max {
            open.evict_from_busiest_client()
        } else {
            None
        };
        let id = open.next_id;
        open.next_id += 1;
        open.by_id.insert(
            id,
            Startup {
                client: client_share(peer),
                socket,
            },
        );
        let place = Place {
            startups: Arc::clone(self),
            id,
        };
        (place, evicted)
    }
}

impl Open {
    /// Shuts down the oldest startup of the client holding the most (ties: the one whose
    /// startup is oldest) and forgets it; its client.
    fn evict_from_busiest_client(&mut self) -> Option<IpAddr> {
        let mut held: std::collections::HashMap<IpAddr, (usize, u64)> = Default::default();
        for (&id, startup) in &self.by_id {
            // Ids ascend: the first one seen is the client's oldest.
            held.entry(startup.client).or_insert((0, id)).0 += 1;
        }
        let (_, oldest) = held
            .values()
            .copied()
            .max_by(|(n1, id1), (n2, id2)| n1.cmp(n2).then(id2.cmp(id1)))?;
        let startup = self.by_id.remove(&oldest)?;
        let _ = startup.socket.shutdown(Shutdown::Both);
        Some(startup.client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A connected socket (its listener's side is dropped: only shutdown(2) is tested on it).
    fn socket(listener: &TcpListener) -> Arc<TcpStream> {
        Arc::new(TcpStream::connect(listener.local_addr().unwrap()).unwrap())
    }

    #[test]
    fn a_full_pool_makes_way_from_the_client_holding_the_most() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let startups = Startups::new(4);
        let [flood, other, user, fourth]: [IpAddr; 4] =
            ["127.0.3.1", "127.0.3.2", "127.0.0.1", "127.0.3.4"].map(|a| a.parse().unwrap());
        let mut places = Vec::new();
        let mut admit = |peer| {
            let (place, evicted) = startups.admit(peer, socket(&listener));
            places.push(place);
            evicted
        };
        // (who connects, whose startup made way); the pool holds 4.
        let steps = [
            (flood, None),
            (flood, None),
            (other, None),
            (flood, None),
            // Full: flood holds 3, the user's connection takes the place of flood's oldest.
            (user, Some(flood)),
            // flood makes way for its own while it holds the most.
            (flood, Some(flood)),
            (flood, Some(flood)),
            // flood 2, other 1, user 1: other's new one makes way from flood too.
            (other, Some(flood)),
            // other 2, user 1, flood 1: from other, whoever connects.
            (flood, Some(other)),
            (fourth, Some(flood)),
            // One each: the oldest makes way, the user's here (the documented limit: a flood
            // from as many addresses as there are places).
            (other, Some(user)),
        ];
        for (n, (peer, made_way)) in steps.into_iter().enumerate() {
            assert_eq!(admit(peer), made_way, "step {n}: {peer} connects");
        }
        // A place given back (the connection authenticated or ended) makes room.
        drop(places.pop());
        let (_place, evicted) = startups.admit(user, socket(&listener));
        assert_eq!(evicted, None);
        assert_eq!(startups.lock().by_id.len(), 4);
    }
}
