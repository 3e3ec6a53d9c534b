//! Probation as a sans-IO core: what a connected peer that is not admitted
//! may do, and for how long.
//!
//! A peer outside the admitted set that got through the transport (cluster
//! secret, noise) is on probation from its first connection: it may send at
//! most `max_joins_per_connection` requests per connection, all on
//! [`JOIN_PROTOCOL`] (an invite), and its connections are closed when its
//! probation runs out, unless it is admitted first — then it is promoted in
//! place, on the connections it has.
//!
//! In quinn-proto's shape: the swarm driver (`super::driver`) feeds it
//! connections, identifications, admissions, requests and the time
//! (`handle_*`, `now` a plain [`std::time::Instant`]), asks when it wants the
//! time next ([`Probation::poll_timeout`]), and carries out the decisions it
//! returns (refuse a request, promote a peer, close a peer's connections).
//! The core does no IO, never reads a clock and does not depend on tokio.
//! libp2p's [`PeerId`], [`ConnectionId`] and [`Multiaddr`] are plain values
//! here.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};

use crate::net::JOIN_PROTOCOL;

/// Why a request from a peer on probation is refused. Its text is what the
/// requester sees.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Only join requests are accepted before admission.
    #[error(
        "this node has not admitted {peer}; before admission only `{JOIN_PROTOCOL}` requests (an invite) are accepted"
    )]
    NotJoin { peer: PeerId },
    /// The connection used up its join requests.
    #[error(
        "too many join requests: at most {max} per connection from a node that is not admitted"
    )]
    TooManyJoins { max: u32 },
    /// Neither admitted nor on probation (on a connection probation does not
    /// know, e.g. one that closed).
    #[error("this node has not admitted {peer}")]
    NotOnProbation { peer: PeerId },
}

/// A peer on probation that was admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promotion {
    /// `Some` once it identified itself: the addresses to give kad (empty
    /// when it does not speak kad), and it is up now. `None`: it is up when
    /// it identifies itself.
    pub identified: Option<Vec<Multiaddr>>,
}

/// One peer on probation.
#[derive(Debug)]
struct OnProbation {
    /// When its connections are closed unless it is admitted first.
    deadline: Instant,
    /// Join requests received on each of its connections.
    joins: BTreeMap<ConnectionId, u32>,
    /// See [`Promotion::identified`].
    identified: Option<Vec<Multiaddr>>,
}

/// Every connected peer of one node that is not admitted.
#[derive(Debug)]
pub struct Probation {
    period: Duration,
    max_joins_per_connection: u32,
    peers: BTreeMap<PeerId, OnProbation>,
}

impl Probation {
    /// Peers may stay `period` on probation and send
    /// `max_joins_per_connection` join requests per connection.
    pub fn new(period: Duration, max_joins_per_connection: u32) -> Self {
        debug_assert!(!period.is_zero());
        Self {
            period,
            max_joins_per_connection,
            peers: BTreeMap::new(),
        }
    }

    /// Whether no peer is on probation.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// A connection of `peer`, which is not admitted, was established: its
    /// probation starts (its deadline counts from the first connection) or
    /// extends to this connection. Returns whether it started.
    pub fn handle_connection(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        now: Instant,
    ) -> bool {
        let mut started = false;
        let on_probation = self.peers.entry(peer).or_insert_with(|| {
            started = true;
            OnProbation {
                deadline: now + self.period,
                joins: BTreeMap::new(),
                identified: None,
            }
        });
        on_probation.joins.insert(connection, 0);
        started
    }

    /// A connection of `peer` closed; `remaining` of its connections are
    /// still established. With none left, its probation ends.
    pub fn handle_connection_closed(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        remaining: u32,
    ) {
        if remaining == 0 {
            self.peers.remove(&peer);
        } else if let Some(on_probation) = self.peers.get_mut(&peer) {
            on_probation.joins.remove(&connection);
        }
    }

    /// `peer` identified itself; `kad_addrs` are the addresses to give kad
    /// should it be promoted.
    pub fn handle_identified(&mut self, peer: PeerId, kad_addrs: Vec<Multiaddr>) {
        if let Some(on_probation) = self.peers.get_mut(&peer) {
            on_probation.identified = Some(kad_addrs);
        }
    }

    /// `peer` was admitted: its probation ends. `None` if it was not on
    /// probation.
    pub fn handle_admitted(&mut self, peer: &PeerId) -> Option<Promotion> {
        self.peers.remove(peer).map(|p| Promotion {
            identified: p.identified,
        })
    }

    /// `peer`, which is not admitted, sent a request on `protocol` over
    /// `connection`: whether protocol code may see it. An accepted join
    /// request counts towards the connection's limit.
    pub fn handle_request(
        &mut self,
        peer: &PeerId,
        connection: ConnectionId,
        protocol: &str,
    ) -> Result<(), Refusal> {
        if protocol != JOIN_PROTOCOL {
            return Err(Refusal::NotJoin { peer: *peer });
        }
        let count = self
            .peers
            .get_mut(peer)
            .and_then(|p| p.joins.get_mut(&connection));
        match count {
            Some(n) if *n < self.max_joins_per_connection => {
                *n += 1;
                Ok(())
            }
            Some(_) => Err(Refusal::TooManyJoins {
                max: self.max_joins_per_connection,
            }),
            None => Err(Refusal::NotOnProbation { peer: *peer }),
        }
    }

    /// When [`Probation::handle_timeout`] wants to be called next: the
    /// earliest deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers.values().map(|p| p.deadline).min()
    }

    /// Time passed: the peers whose probation ran out, in order. Their
    /// probation is over; close their connections.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<PeerId> {
        let expired: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in &expired {
            self.peers.remove(peer);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(30);

    fn peer(n: u8) -> PeerId {
        libp2p::identity::Keypair::ed25519_from_bytes([n; 32])
            .expect("32 bytes make an ed25519 key")
            .public()
            .to_peer_id()
    }

    fn conn(n: usize) -> ConnectionId {
        ConnectionId::new_unchecked(n)
    }

    #[test]
    fn only_a_few_join_requests_per_connection() {
        let now = tokio::time::Instant::now().into_std();
        let mut probation = Probation::new(PERIOD, 2);
        assert!(probation.handle_connection(peer(1), conn(1), now));
        assert_eq!(
            probation.handle_request(&peer(1), conn(1), "state-sync/1"),
            Err(Refusal::NotJoin { peer: peer(1) })
        );
        for _ in 0..2 {
            assert_eq!(
                probation.handle_request(&peer(1), conn(1), JOIN_PROTOCOL),
                Ok(())
            );
        }
        let refusal = probation
            .handle_request(&peer(1), conn(1), JOIN_PROTOCOL)
            .unwrap_err();
        assert_eq!(refusal, Refusal::TooManyJoins { max: 2 });
        assert_eq!(
            refusal.to_string(),
            "too many join requests: at most 2 per connection from a node that is not admitted"
        );
        // A second connection has its own count; a closed one has none.
        assert!(!probation.handle_connection(peer(1), conn(2), now));
        assert_eq!(
            probation.handle_request(&peer(1), conn(2), JOIN_PROTOCOL),
            Ok(())
        );
        probation.handle_connection_closed(peer(1), conn(2), 1);
        assert_eq!(
            probation.handle_request(&peer(1), conn(2), JOIN_PROTOCOL),
            Err(Refusal::NotOnProbation { peer: peer(1) })
        );
        // Nor does a peer that is not on probation.
        assert_eq!(
            probation.handle_request(&peer(9), conn(9), JOIN_PROTOCOL),
            Err(Refusal::NotOnProbation { peer: peer(9) })
        );
    }

    #[test]
    fn probation_runs_out_from_the_first_connection() {
        let start = tokio::time::Instant::now().into_std();
        let mut probation = Probation::new(PERIOD, 4);
        probation.handle_connection(peer(1), conn(1), start);
        let later = start + Duration::from_secs(10);
        probation.handle_connection(peer(2), conn(2), later);
        // Another connection does not extend the deadline.
        probation.handle_connection(peer(1), conn(3), later);
        assert_eq!(probation.poll_timeout(), Some(start + PERIOD));
        assert!(
            probation
                .handle_timeout(start + PERIOD - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(probation.handle_timeout(start + PERIOD), vec![peer(1)]);
        assert_eq!(probation.poll_timeout(), Some(later + PERIOD));
        assert_eq!(probation.handle_timeout(later + PERIOD), vec![peer(2)]);
        assert!(probation.is_empty());
        assert_eq!(probation.poll_timeout(), None);
    }

    #[test]
    fn admission_promotes_with_what_identify_said() {
        let now = tokio::time::Instant::now().into_std();
        let mut probation = Probation::new(PERIOD, 4);
        probation.handle_connection(peer(1), conn(1), now);
        probation.handle_connection(peer(2), conn(2), now);
        let addr: Multiaddr = "/ip4/10.0.0.1/tcp/4001".parse().unwrap();
        probation.handle_identified(peer(1), vec![addr.clone()]);
        assert_eq!(
            probation.handle_admitted(&peer(1)),
            Some(Promotion {
                identified: Some(vec![addr])
            })
        );
        assert_eq!(
            probation.handle_admitted(&peer(2)),
            Some(Promotion { identified: None })
        );
        // Promoted peers are no longer on probation: no deadline, no refusal
        // bookkeeping, nothing to promote twice.
        assert_eq!(probation.handle_admitted(&peer(1)), None);
        assert!(probation.is_empty());
        assert!(probation.handle_timeout(now + PERIOD).is_empty());
    }

    #[test]
    fn the_last_connection_closing_ends_probation() {
        let now = tokio::time::Instant::now().into_std();
        let mut probation = Probation::new(PERIOD, 4);
        probation.handle_connection(peer(1), conn(1), now);
        probation.handle_connection(peer(1), conn(2), now);
        probation.handle_connection_closed(peer(1), conn(1), 1);
        assert!(!probation.is_empty());
        probation.handle_connection_closed(peer(1), conn(2), 0);
        assert!(probation.is_empty());
        // A new connection starts a new probation, with a new deadline.
        let later = now + Duration::from_secs(5);
        assert!(probation.handle_connection(peer(1), conn(3), later));
        assert_eq!(probation.poll_timeout(), Some(later + PERIOD));
    }
}
