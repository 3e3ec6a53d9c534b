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
//! A message larger than a net payload goes as several requests, in order
//! ([`parts`]: automerge puts every change a peer lacks in one message, so
//! a fresh peer's first message grows with the state's whole history). The
//! receiver gathers at most [`SyncConfig::max_message_bytes`] per peer.
//!
//! A failed delivery resets that peer's sync state (the next message starts
//! a fresh exchange that resends whatever the peer lacks). Every
//! `anti_entropy_interval` the core resets and re-syncs with every peer, so
//! a node that was partitioned without the connection dropping converges
//! after the partition heals.

pub mod parts;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use automerge::sync::{self, SyncDoc};
use bytes::Bytes;

use super::error::ClusterError;
use super::state::ClusterState;
use crate::net::{MAX_PAYLOAD_BYTES, NodeId};

/// The net protocol name of state sync (2: every payload is a part, see
/// [`parts`]).
pub const SYNC_PROTOCOL: &str = "state-sync/2";

/// The default of [`SyncConfig::max_message_bytes`]: room for the history
/// of some thousands of pushes of a 1,000-file site.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// How the sync core behaves.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// How often every peer is re-synced from scratch.
    pub anti_entropy_interval: Duration,
    /// The largest payload one part of a message takes (tag included); at
    /// most [`MAX_PAYLOAD_BYTES`].
    pub part_bytes: usize,
    /// The largest message this node gathers from one peer
    /// (`limits.cluster.max_sync_message`).
    pub max_message_bytes: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            anti_entropy_interval: Duration::from_secs(10),
            part_bytes: MAX_PAYLOAD_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

#[derive(Debug, Default)]
struct PeerSync {
    state: sync::State,
    /// A part to this peer is on its way and not yet acknowledged.
    in_flight: bool,
    /// The parts of the current message not yet sent, in order.
    outgoing: VecDeque<Bytes>,
    /// The parts of the peer's current message received so far.
    incoming: parts::Reassembly,
}

impl PeerSync {
    /// Between two parts of one message: nothing else may be sent, and the
    /// sync state must not be reset under it.
    fn mid_message(&self) -> bool {
        self.in_flight || !self.outgoing.is_empty()
    }
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
        assert!(!config.anti_entropy_interval.is_zero());
        assert!(config.part_bytes > parts::TAG_BYTES && config.part_bytes <= MAX_PAYLOAD_BYTES);
        assert!(config.max_message_bytes > 0);
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

    /// The replica's changes since the last save, for persisting.
    pub fn save_incremental(&mut self) -> Vec<u8> {
        self.state.save_incremental()
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
        let max_message_bytes = self.config.max_message_bytes;
        let Some(entry) = self.peers.get_mut(&peer) else {
            return Ok(());
        };
        let message = match entry.incoming.push(payload, max_message_bytes) {
            // More parts are due: nothing to answer yet.
            Ok(None) => return Ok(()),
            Ok(Some(message)) => Ok(message),
            Err(e) => Err(e.to_string()),
        };
        let heads_before = self.state.heads();
        let result = message.and_then(|message| {
            let message = sync::Message::decode(&message).map_err(|e| e.to_string())?;
            self.state
                .doc_mut()
                .sync()
                .receive_sync_message(&mut entry.state, message)
                .map_err(|e| e.to_string())
        });
        if let Err(reason) = result {
            // Start afresh, but not at once: answering now would have the
            // peer send the same message again (one over our bound, say) as
            // fast as the network goes. The next anti-entropy round retries.
            if let Some(entry) = self.peers.get_mut(&peer) {
                entry.state = sync::State::new();
            }
            return Err(ClusterError::BadSyncMessage { peer, reason });
        }
        self.dirty.insert(peer);
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
        // The rest of a message under way goes first: its parts must follow
        // each other with nothing in between.
        if let Some((peer, entry)) = self
            .peers
            .iter_mut()
            .find(|(_, e)| !e.in_flight && !e.outgoing.is_empty())
        {
            let part = entry.outgoing.pop_front()?;
            entry.in_flight = true;
            return Some((*peer, part));
        }
        while let Some(peer) = self
            .dirty
            .iter()
            .copied()
            .find(|p| self.peers.get(p).is_some_and(|entry| !entry.mid_message()))
        {
            self.dirty.remove(&peer);
            let entry = self.peers.get_mut(&peer)?;
            if let Some(message) = self
                .state
                .doc_mut()
                .sync()
                .generate_sync_message(&mut entry.state)
            {
                let encoded = message.encode();
                let mut parts = parts::split(&encoded, self.config.part_bytes);
                if parts.len() > 1 {
                    tracing::info!(peer = %peer, size_bytes = encoded.len(), parts = parts.len(), "state sync: sending a large message in parts");
                }
                let first = parts.pop_front()?;
                entry.outgoing = parts;
                entry.in_flight = true;
                return Some((peer, first));
            }
        }
        // Dirty peers left now all have a message under way: they stay dirty.
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
            // next anti-entropy round rather than hammering a lost peer; the
            // rest of the message goes too (the next one starts afresh).
            entry.outgoing.clear();
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
            if !entry.mid_message() && !skip {
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

    /// Push `pushes` deployments of `files` artifacts each, on `core`.
    fn grow(core: &mut SyncCore, pushes: usize, files: usize) {
        let local = core.state().local_id();
        for push in 0..pushes {
            let env = EnvKey {
                project: "site".into(),
                branch: "main".into(),
            };
            let commit = format!("c{push}");
            let artifacts = (0..files)
                .map(|f| cid_of(format!("{push}/{f}").as_bytes()))
                .collect();
            core.update(|s| {
                s.apply_deployment(
                    &env,
                    DeploymentUpdate {
                        commit: commit.clone(),
                        manifest_cid: cid_of(commit.as_bytes()),
                        artifacts,
                        warrant: Some(crate::cluster::testing::push_warrant(
                            local,
                            &env,
                            Some(&commit),
                        )),
                    },
                )
            })
            .unwrap();
        }
    }

    fn pair(config: SyncConfig) -> [SyncCore; 2] {
        let mut founder = crate::cluster::testing::founded_state(1);
        let joiner = crate::cluster::testing::joined_state(2, &mut founder);
        [
            SyncCore::new(founder, config.clone()),
            SyncCore::new(joiner, config),
        ]
    }

    fn connect(cores: &mut [SyncCore; 2], now: Instant) {
        cores[0].handle_peer_up(node(2), now);
        cores[1].handle_peer_up(node(1), now);
    }

    /// A history far larger than one payload reaches a fresh peer: the
    /// message goes in parts (issue 13: a 1,000-file site's state passed
    /// 4 MiB after ~70 pushes, and the message was dropped).
    #[test]
    fn a_state_larger_than_a_payload_syncs_in_parts() {
        let now = tokio::time::Instant::now().into_std();
        let mut cores = pair(SyncConfig::default());
        // 120 pushes of a 1,000-file site: ~7 MiB of history.
        grow(&mut cores[0], 120, 1000);
        let history = cores[0].save().len();
        connect(&mut cores, now);
        let mut largest = 0;
        let mut delivered = 0;
        loop {
            let mut progressed = false;
            for i in 0..2 {
                while let Some((to, payload)) = cores[i].poll_transmit() {
                    largest = largest.max(payload.len());
                    assert!(payload.len() <= MAX_PAYLOAD_BYTES);
                    cores[1 - i]
                        .handle_message(node(i as u8 + 1), &payload, now)
                        .unwrap();
                    assert_eq!(to, cores[1 - i].state().local_id());
                    cores[i].handle_transmit_done(to, true);
                    delivered += 1;
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
            assert!(delivered < 1000, "sync does not quiesce");
        }
        assert_eq!(cores[0].state().state_hash(), cores[1].state().state_hash());
        assert_eq!(
            cores[1]
                .state()
                .deployment(&EnvKey {
                    project: "site".into(),
                    branch: "main".into()
                })
                .unwrap()
                .commit,
            "c119"
        );
        assert_eq!(
            largest, MAX_PAYLOAD_BYTES,
            "the first message went in full-size parts"
        );
        assert!(
            history > MAX_PAYLOAD_BYTES,
            "the saved history is {history} bytes"
        );
    }

    /// Deliver messages between the two cores until they quiesce; `fate`
    /// decides for each payload from core 0 whether it is delivered. Returns
    /// the errors core 1 answered with.
    fn exchange(
        cores: &mut [SyncCore; 2],
        now: Instant,
        mut fate: impl FnMut(&[u8]) -> bool,
    ) -> Vec<ClusterError> {
        let mut errors = Vec::new();
        for _ in 0..10_000 {
            let mut progressed = false;
            for i in 0..2 {
                while let Some((to, payload)) = cores[i].poll_transmit() {
                    progressed = true;
                    if i == 0 && !fate(&payload) {
                        cores[0].handle_transmit_done(to, false);
                        continue;
                    }
                    let from = cores[i].state().local_id();
                    let result = cores[1 - i].handle_message(from, &payload, now);
                    cores[i].handle_transmit_done(to, result.is_ok());
                    errors.extend(result.err());
                }
            }
            if !progressed {
                return errors;
            }
        }
        panic!("sync does not quiesce");
    }

    /// A part that is not delivered abandons the message; the next
    /// exchange starts afresh and still converges.
    #[test]
    fn a_lost_part_restarts_the_message() {
        let now = tokio::time::Instant::now().into_std();
        let config = SyncConfig {
            part_bytes: 1024,
            ..SyncConfig::default()
        };
        let mut cores = pair(config);
        grow(&mut cores[0], 3, 50);
        connect(&mut cores, now);
        // Deliver two parts of the founder's large message, lose the third.
        let mut parts = 0;
        let errors = exchange(&mut cores, now, |payload| {
            if payload[0] != 0 {
                parts += 1;
            }
            parts != 3
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert!(parts >= 3, "the changes went in {parts} parts");
        assert!(
            cores[1]
                .peers
                .get(&node(1))
                .unwrap()
                .incoming
                .gathered_bytes()
                > 0
        );
        assert_ne!(cores[0].state().state_hash(), cores[1].state().state_hash());
        // Anti-entropy starts a fresh exchange; it replaces what was gathered.
        let later = now + Duration::from_secs(11);
        cores[0].handle_timeout(later);
        cores[1].handle_timeout(later);
        let errors = exchange(&mut cores, later, |_| true);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(cores[0].state().state_hash(), cores[1].state().state_hash());
        assert_eq!(
            cores[1]
                .peers
                .get(&node(1))
                .unwrap()
                .incoming
                .gathered_bytes(),
            0
        );
    }

    /// A message over `max_message_bytes` is refused, named, and not kept.
    #[test]
    fn a_message_over_the_bound_is_refused() {
        let now = tokio::time::Instant::now().into_std();
        let mut cores = pair(SyncConfig {
            part_bytes: 1024,
            max_message_bytes: 4096,
            ..SyncConfig::default()
        });
        grow(&mut cores[0], 3, 50);
        connect(&mut cores, now);
        let errors = exchange(&mut cores, now, |_| true);
        let error = errors
            .first()
            .expect("the large message was refused")
            .to_string();
        assert!(error.contains("limits.cluster.max_sync_message"), "{error}");
        assert_eq!(
            cores[1]
                .peers
                .get(&node(1))
                .unwrap()
                .incoming
                .gathered_bytes(),
            0
        );
        assert_ne!(cores[0].state().state_hash(), cores[1].state().state_hash());
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
