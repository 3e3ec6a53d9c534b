//! State sync as a sans-IO core: automerge's sync protocol
//! (`automerge::sync::{State, Message}`) per peer, fed events and the time
//! by a driver, polled for what to send.
//!
//! In quinn-proto's shape: inputs are `handle_*` methods (peer up/down, a
//! received message, a delivery outcome, a local change, `handle_timeout`),
//! outputs are `poll_*` methods ([`SyncCore::poll_transmit`],
//! [`SyncCore::poll_timeout`]). The core does no IO, never reads a clock
//! (`now` is an argument, a plain [`std::time::Instant`]) and does not
//! depend on tokio, so a unit test, the libp2p driver and the simulator
//! drive the same code ([`super::driver::run_sync`] is the tokio driver).
//!
//! # Transport contract
//!
//! Every sync message is one request on protocol [`SYNC_PROTOCOL`]; the
//! answer is an empty acknowledgement. The core hands out at most one
//! message per peer at a time ([`SyncCore::poll_transmit`]) and the next only
//! after the driver reported the previous one delivered
//! ([`SyncCore::handle_transmit_done`]), so each direction is in order, as the
//! automerge protocol assumes. Messages are generated when they are polled,
//! from the document as it is then, so a burst of local changes costs one
//! message.
//!
//! A failed delivery resets that peer's sync state (the next message starts
//! a fresh exchange that resends whatever the peer lacks). Every
//! `anti_entropy_interval` the core resets and re-syncs with every peer, so
//! a node that was partitioned without the connection dropping converges
//! after the partition heals.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use automerge::sync::{self, SyncDoc};
use bytes::Bytes;

use super::error::ClusterError;
use super::state::ClusterState;
use crate::net::{MAX_PAYLOAD_BYTES, NodeId};

/// The net protocol name of state sync.
pub const SYNC_PROTOCOL: &str = "state-sync/1";

/// How the sync core behaves.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// How often every peer is re-synced from scratch.
    pub anti_entropy_interval: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            anti_entropy_interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Default)]
struct PeerSync {
    state: sync::State,
    /// A message to this peer is on its way and not yet acknowledged.
    in_flight: bool,
}

/// The sync protocol core for one node.
#[derive(Debug)]
pub struct SyncCore {
    state: ClusterState,
    config: SyncConfig,
    peers: BTreeMap<NodeId, PeerSync>,
    /// Peers that may have something to send to (checked on poll).
    dirty: BTreeSet<NodeId>,
    next_anti_entropy: Option<Instant>,
}

impl SyncCore {
    pub fn new(state: ClusterState, config: SyncConfig) -> Self {
        debug_assert!(!config.anti_entropy_interval.is_zero());
        Self {
            state,
            config,
            peers: BTreeMap::new(),
            dirty: BTreeSet::new(),
            next_anti_entropy: None,
        }
    }

    /// The replica this core syncs.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Change the replica; every peer is told (the caller need not call
    /// [`SyncCore::handle_local_change`]).
    pub fn update<R>(&mut self, change: impl FnOnce(&mut ClusterState) -> R) -> R {
        let result = change(&mut self.state);
        self.handle_local_change();
        result
    }

    /// The replica's bytes, for persisting.
    pub fn save(&mut self) -> Vec<u8> {
        self.state.save()
    }

    /// The replica changed locally: every peer may need the new changes.
    pub fn handle_local_change(&mut self) {
        self.dirty.extend(self.peers.keys().copied());
    }

    /// Peers this core syncs with.
    pub fn peers(&self) -> impl Iterator<Item = &NodeId> {
        self.peers.keys()
    }

    /// A connection to `peer` came up: start a fresh exchange.
    pub fn handle_peer_up(&mut self, peer: NodeId, now: Instant) {
        if peer == self.state.local_id() {
            return;
        }
        // A repeated up (the driver also seeds from `Net::peers`) keeps the
        // exchange under way, so an in-flight message stays accounted for.
        self.peers.entry(peer).or_default();
        self.dirty.insert(peer);
        self.arm_anti_entropy(now);
    }

    /// The last connection to `peer` went down.
    pub fn handle_peer_down(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
        self.dirty.remove(&peer);
    }

    /// A sync message arrived from `peer`.
    ///
    /// On an invalid message the peer's sync state is reset (a fresh
    /// exchange follows) and the error says why.
    pub fn handle_message(
        &mut self,
        peer: NodeId,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), ClusterError> {
        if !self.peers.contains_key(&peer) {
            // A message can overtake the peer-up event; treat it as one.
            self.handle_peer_up(peer, now);
        }
        let heads_before = self.state.heads();
        let result = match sync::Message::decode(payload) {
            Ok(message) => {
                let Some(entry) = self.peers.get_mut(&peer) else {
                    return Ok(());
                };
                self.state
                    .doc_mut()
                    .sync()
                    .receive_sync_message(&mut entry.state, message)
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        self.dirty.insert(peer);
        if let Err(reason) = result {
            if let Some(entry) = self.peers.get_mut(&peer) {
                entry.state = sync::State::new();
            }
            return Err(ClusterError::BadSyncMessage { peer, reason });
        }
        if self.state.heads() != heads_before {
            // Verify what arrived before anyone reads it.
            self.state.refresh();
            // New changes: pass them on to everyone else too.
            self.handle_local_change();
        }
        Ok(())
    }

    /// The next message to send, if any: `(peer, payload)`. Send it as a
    /// request on [`SYNC_PROTOCOL`] and report the outcome with
    /// [`SyncCore::handle_transmit_done`].
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Bytes)> {
        while let Some(peer) = self
            .dirty
            .iter()
            .copied()
            .find(|p| self.peers.get(p).is_some_and(|entry| !entry.in_flight))
        {
            self.dirty.remove(&peer);
            let entry = self.peers.get_mut(&peer)?;
            if let Some(message) = self
                .state
                .doc_mut()
                .sync()
                .generate_sync_message(&mut entry.state)
            {
                let payload = message.encode();
                if payload.len() > MAX_PAYLOAD_BYTES {
                    // Automerge sends the changes a peer lacks in one message;
                    // a state this large is outside what this protocol carries.
                    tracing::error!(peer = %peer, size_bytes = payload.len(), "state sync: message over the payload limit; not sent");
                    entry.state = sync::State::new();
                    continue;
                }
                entry.in_flight = true;
                return Some((peer, Bytes::from(payload)));
            }
        }
        // Dirty peers left now all have a message in flight: they stay dirty.
        None
    }

    /// The message last polled for `peer` was delivered (`true`) or not.
    pub fn handle_transmit_done(&mut self, peer: NodeId, delivered: bool) {
        // The peer may have gone down and up since: a result for a message
        // the current exchange did not send is stale.
        let Some(entry) = self.peers.get_mut(&peer).filter(|e| e.in_flight) else {
            return;
        };
        entry.in_flight = false;
        if !delivered {
            // What we think the peer has may be wrong now. Start over at the
            // next anti-entropy round rather than hammering a lost peer.
            entry.state = sync::State::new();
            self.dirty.remove(&peer);
        }
    }

    /// When [`SyncCore::handle_timeout`] wants to be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_anti_entropy
    }

    /// Time passed: run anti-entropy if it is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(due) = self.next_anti_entropy else {
            return;
        };
        if now < due {
            return;
        }
        let skip = crate::bugs::active(crate::bugs::Bug::SkipAntiEntropy);
        for (peer, entry) in &mut self.peers {
            if !entry.in_flight && !skip {
                entry.state = sync::State::new();
                self.dirty.insert(*peer);
            }
        }
        self.next_anti_entropy = Some(now + self.config.anti_entropy_interval);
    }

    fn arm_anti_entropy(&mut self, now: Instant) {
        if self.next_anti_entropy.is_none() {
            self.next_anti_entropy = Some(now + self.config.anti_entropy_interval);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::state::DeploymentUpdate;
    use crate::deploy::state::EnvKey;
    use crate::store::cid_of;

    fn node(n: u8) -> NodeId {
        crate::cluster::testing::test_key(n).node_id()
    }

    /// Deliver every message between the cores until none has anything to say.
    fn pump(cores: &mut [SyncCore], now: Instant) -> usize {
        let mut delivered = 0;
        loop {
            let mut progressed = false;
            for i in 0..cores.len() {
                while let Some((to, payload)) = cores[i].poll_transmit() {
                    let from = cores[i].state().local_id();
                    let j = cores
                        .iter()
                        .position(|c| c.state().local_id() == to)
                        .unwrap();
                    cores[j].handle_message(from, &payload, now).unwrap();
                    cores[i].handle_transmit_done(to, true);
                    delivered += 1;
                    progressed = true;
                }
            }
            if !progressed {
                return delivered;
            }
            assert!(delivered < 10_000, "sync does not quiesce");
        }
    }

    #[test]
    fn two_cores_converge_and_quiesce() {
        let now = tokio::time::Instant::now().into_std();
        let mut founder = crate::cluster::testing::founded_state(1);
        let joiner = crate::cluster::testing::joined_state(2, &mut founder);
        let mut a = SyncCore::new(founder, SyncConfig::default());
        let mut b = SyncCore::new(joiner, SyncConfig::default());
        let env = EnvKey {
            project: "p".into(),
            branch: "main".into(),
        };
        a.update(|s| {
            s.apply_deployment(
                &env,
                DeploymentUpdate {
                    commit: "c1".into(),
                    manifest_cid: cid_of(b"m"),
                    artifacts: vec![],
                    warrant: Some(crate::cluster::testing::push_warrant(
                        node(1),
                        &env,
                        Some("c1"),
                    )),
                },
            )
        })
        .unwrap();
        a.handle_peer_up(node(2), now);
        b.handle_peer_up(node(1), now);
        let mut cores = [a, b];
        assert!(pump(&mut cores, now) > 0);
        assert_eq!(cores[0].state().state_hash(), cores[1].state().state_hash());
        assert_eq!(cores[1].state().deployment(&env).unwrap().commit, "c1");
        // Anti-entropy on converged peers exchanges a few messages and stops.
        let later = now + Duration::from_secs(11);
        cores[0].handle_timeout(later);
        let n = pump(&mut cores, later);
        assert!(n <= 4, "anti-entropy round took {n} messages");
    }

    #[test]
    fn garbage_is_rejected_and_resets() {
        let now = tokio::time::Instant::now().into_std();
        let mut a = SyncCore::new(
            crate::cluster::testing::founded_state(1),
            SyncConfig::default(),
        );
        let err = a
            .handle_message(node(2), b"not automerge", now)
            .unwrap_err();
        assert!(matches!(err, ClusterError::BadSyncMessage { .. }), "{err}");
        // The peer still gets a fresh opening message.
        assert!(a.poll_transmit().is_some());
    }
}
