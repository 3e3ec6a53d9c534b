//! Blob replication as a sans-IO core: fetch a blob by CID from a peer that
//! has it, in chunks of at most [`MAX_PAYLOAD_BYTES`] with several chunks in
//! flight ([`ReplicateConfig::chunks_in_flight`]), written in order and
//! verified before it is stored.
//!
//! The core decides whom to ask and what to do with answers; it never
//! touches the network or the disk, never reads a clock (`now` is an
//! argument, a plain [`std::time::Instant`]) and does not depend on tokio.
//! In quinn-proto's shape, inputs are `handle_*` methods
//! ([`ReplicateCore::handle_want`], [`ReplicateCore::handle_response`],
//! [`ReplicateCore::handle_write_finished`], peer up/down,
//! [`ReplicateCore::handle_timeout`]) and outputs `poll_*` methods: it emits
//! [`Action`]s ([`ReplicateCore::poll_action`]) — send a request,
//! start/append/finish/abort a blob write, a fetch finished or failed — and
//! says when it wants the time ([`ReplicateCore::poll_timeout`]). The driver
//! ([`super::driver::run_replicate`]) performs the actions and reports back.
//! The store verifies the written content against the CID on finish
//! ([`crate::store::BlobStore::finish_write`]); a mismatch rejects that peer
//! for the blob and the next holder is tried.
//!
//! # Protocol `"blob/1"`
//!
//! Requests are JSON [`BlobRequest`]s. `Have` is answered with JSON
//! [`HaveReply`]; `Get { cid, offset, len }` with exactly `len` raw bytes of
//! the blob from `offset` (`len` ≤ [`MAX_PAYLOAD_BYTES`]). Answering them
//! from the local store is file IO, so it lives on the driver side, in
//! [`super::blob_server`].
//!
//! # Choosing a source
//!
//! Candidates are the holders the cluster state records (best rendezvous
//! rank first, to spread load); when none is left, every connected peer is
//! asked `Have`. Each failed try (an error, a short chunk, a corrupt blob, a
//! round where nobody had it) counts towards `max_attempts`; a round where
//! nobody had it waits `retry_delay` before the next.
//!
//! A *busy* answer ([`NetError::Busy`]: the holder has too many of this
//! node's requests open, or this node asks faster than its per-peer limits
//! allow) says nothing about the holder's copy: the holder is skipped for
//! the rest of the round (another is tried), never rejected, and the try
//! does not count towards `max_attempts`. A round that found no copy but
//! met a busy holder backs off `retry_delay` and tries again, for at most
//! `max_busy_rounds` such rounds.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cid::Cid;
use serde::{Deserialize, Serialize};

use super::placement;
use crate::net::{MAX_PAYLOAD_BYTES, NetError, NodeId};
use crate::store::StoreError;

/// The net protocol name of blob replication.
pub const BLOB_PROTOCOL: &str = "blob/1";

/// A request of the blob protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobRequest {
    /// Do you hold this blob, and how large is it?
    Have { cid: String },
    /// `len` bytes of the blob from `offset`.
    Get { cid: String, offset: u64, len: u64 },
}

/// The answer to [`BlobRequest::Have`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaveReply {
    /// The blob's size if the peer holds it.
    pub size_bytes: Option<u64>,
}

/// How replication behaves.
#[derive(Clone, Debug)]
pub struct ReplicateConfig {
    /// Fetches running at once.
    pub max_concurrent_fetches: usize,
    /// Failed tries of one blob before the fetch is given up.
    pub max_attempts: u32,
    /// Bytes asked for per `Get`.
    pub chunk_bytes: usize,
    /// `Get`s of one fetch in flight at once (pipelining: the holder reads
    /// and sends the next chunks while this node writes and hashes the
    /// last). Chunks that arrive out of order wait, so one fetch buffers at
    /// most `chunks_in_flight × chunk_bytes`.
    pub chunks_in_flight: usize,
    /// Wait after a round in which no peer had the blob.
    pub retry_delay: Duration,
    /// Rounds that found no copy but met a busy holder, retried (after
    /// `retry_delay`) without counting towards `max_attempts`.
    pub max_busy_rounds: u32,
    /// R; `None` means min(3, number of admitted members).
    pub replication_factor: Option<usize>,
}

impl Default for ReplicateConfig {
    fn default() -> Self {
        Self {
            max_concurrent_fetches: 4,
            max_attempts: 6,
            chunk_bytes: MAX_PAYLOAD_BYTES,
            chunks_in_flight: 2,
            retry_delay: Duration::from_secs(2),
            // A minute of busy holders at the default `retry_delay`.
            max_busy_rounds: 30,
            replication_factor: None,
        }
    }
}

/// Names a request the core sent, to route its answer back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// What the core wants done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `payload` to `peer` on [`BLOB_PROTOCOL`]; report the answer with
    /// [`ReplicateCore::handle_response`].
    Send {
        id: RequestId,
        peer: NodeId,
        payload: Bytes,
    },
    /// Open a blob write for `cid` (discarding any unfinished one).
    StartWrite { cid: Cid },
    /// Append `chunk` to the open write of `cid`.
    Write { cid: Cid, chunk: Bytes },
    /// Verify and publish the write of `cid`; report with
    /// [`ReplicateCore::handle_write_finished`].
    FinishWrite { cid: Cid },
    /// Discard the open write of `cid`.
    AbortWrite { cid: Cid },
    /// `cid` is stored and verified; `rejected` are the peers whose copy
    /// was corrupt or who broke the protocol.
    Fetched {
        cid: Cid,
        from: NodeId,
        rejected: Vec<NodeId>,
    },
    /// `cid` could not be fetched.
    Failed {
        cid: Cid,
        attempts: u32,
        reason: String,
    },
}

/// How finishing a write went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Stored,
    /// The content did not hash to the CID.
    Mismatch,
    /// A local failure (disk); not the peer's fault.
    LocalError(String),
}

impl WriteOutcome {
    /// Classify a store result.
    pub fn from_store(result: Result<Cid, StoreError>) -> Self {
        match result {
            Ok(_) => WriteOutcome::Stored,
            Err(StoreError::Mismatch { .. }) => WriteOutcome::Mismatch,
            Err(e) => WriteOutcome::LocalError(e.to_string()),
        }
    }
}

/// Why one try of a fetch from one peer failed: counts towards
/// [`ReplicateConfig::max_attempts`], and the last one is the reason a fetch
/// that gives up reports.
#[derive(Debug, thiserror::Error)]
enum TryError {
    /// The request did not get an answer (not connected, timed out, refused).
    #[error("{0}")]
    Net(NetError),
    /// The answer to `Have` is not a [`HaveReply`].
    #[error("invalid Have reply: {0}")]
    BadHave(serde_json::Error),
    /// The answer to `Get` has the wrong length.
    #[error("sent {sent_bytes} bytes for a chunk of {len} at offset {offset}")]
    ShortChunk {
        sent_bytes: usize,
        len: u64,
        offset: u64,
    },
    /// The written blob does not hash to its CID.
    #[error("offered content that does not hash to the CID")]
    Corrupt,
}

impl TryError {
    /// Whether the peer is never asked for this blob again: it sent a corrupt
    /// blob or broke the protocol (a network failure may pass).
    fn rejects_peer(&self) -> bool {
        matches!(self, TryError::ShortChunk { .. } | TryError::Corrupt)
    }

    /// Whether the peer only asked to be asked later: not a failed try.
    fn is_busy(&self) -> bool {
        matches!(self, TryError::Net(NetError::Busy { .. }))
    }
}

#[derive(Debug)]
enum Phase {
    Queued,
    Backoff {
        until: Instant,
    },
    /// `Have` sent to one candidate.
    Asking {
        peer: NodeId,
        id: RequestId,
    },
    /// `Have` sent to every connected peer.
    Probing {
        outstanding: BTreeMap<RequestId, NodeId>,
    },
    Fetching {
        peer: NodeId,
        size_bytes: u64,
        /// The next offset to ask for.
        next_offset: u64,
        /// Bytes handed to [`Action::Write`] so far (in order).
        written: u64,
        /// `Get`s awaiting their answer: request → (offset, len).
        in_flight: BTreeMap<RequestId, (u64, u64)>,
        /// Chunks that arrived before an earlier one, by offset.
        arrived: BTreeMap<u64, Bytes>,
    },
    Verifying {
        peer: NodeId,
    },
}

#[derive(Debug)]
struct Job {
    candidates: BTreeSet<NodeId>,
    /// Tried in this round (cleared after a backoff).
    tried: BTreeSet<NodeId>,
    /// Sent a corrupt blob or broke the protocol: never asked again.
    rejected: BTreeSet<NodeId>,
    probed: bool,
    attempts: u32,
    /// A holder answered busy in this round.
    busy_in_round: bool,
    /// Rounds retried because of busy holders (see
    /// [`ReplicateConfig::max_busy_rounds`]).
    busy_rounds: u32,
    last_error: String,
    phase: Phase,
}

impl Job {
    fn is_active(&self) -> bool {
        !matches!(self.phase, Phase::Queued | Phase::Backoff { .. })
    }
}

/// The replication core of one node.
#[derive(Debug)]
pub struct ReplicateCore {
    local: NodeId,
    config: ReplicateConfig,
    peers: BTreeSet<NodeId>,
    jobs: BTreeMap<Cid, Job>,
    queue: VecDeque<Cid>,
    requests: BTreeMap<RequestId, Cid>,
    next_request: u64,
    actions: VecDeque<Action>,
}

impl ReplicateCore {
    pub fn new(local: NodeId, config: ReplicateConfig) -> Self {
        debug_assert!(config.max_concurrent_fetches > 0 && config.max_attempts > 0);
        debug_assert!(config.chunk_bytes > 0 && config.chunk_bytes <= MAX_PAYLOAD_BYTES);
        debug_assert!(config.chunks_in_flight > 0);
        Self {
            local,
            config,
            peers: BTreeSet::new(),
            jobs: BTreeMap::new(),
            queue: VecDeque::new(),
            requests: BTreeMap::new(),
            next_request: 0,
            actions: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &ReplicateConfig {
        &self.config
    }

    /// Whether a fetch of `cid` is under way.
    pub fn is_fetching(&self, cid: &Cid) -> bool {
        self.jobs.contains_key(cid)
    }

    pub fn handle_peer_up(&mut self, peer: NodeId) {
        if peer != self.local {
            self.peers.insert(peer);
        }
    }

    pub fn handle_peer_down(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
    }

    /// Fetch `cid`; `holders` are the nodes the cluster state says hold it.
    /// Wanting a blob already being fetched adds the holders as candidates.
    pub fn handle_want(&mut self, cid: Cid, holders: BTreeSet<NodeId>, now: Instant) {
        let local = self.local;
        if let Some(job) = self.jobs.get_mut(&cid) {
            job.candidates
                .extend(holders.into_iter().filter(|h| *h != local));
            return;
        }
        self.jobs.insert(
            cid,
            Job {
                candidates: holders.into_iter().filter(|h| *h != local).collect(),
                tried: BTreeSet::new(),
                rejected: BTreeSet::new(),
                probed: false,
                attempts: 0,
                busy_in_round: false,
                busy_rounds: 0,
                last_error: String::new(),
                phase: Phase::Queued,
            },
        );
        self.queue.push_back(cid);
        self.start_queued(now);
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`ReplicateCore::handle_timeout`] wants to be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.jobs
            .values()
            .filter_map(|j| match j.phase {
                Phase::Backoff { until } => Some(until),
                _ => None,
            })
            .min()
    }

    /// Time passed: retry fetches whose backoff is over.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<Cid> = self
            .jobs
            .iter()
            .filter(|(_, j)| matches!(j.phase, Phase::Backoff { until } if until <= now))
            .map(|(c, _)| *c)
            .collect();
        for cid in due {
            if let Some(job) = self.jobs.get_mut(&cid) {
                job.phase = Phase::Queued;
                job.tried.clear();
                job.probed = false;
                job.busy_in_round = false;
                self.queue.push_back(cid);
            }
        }
        self.start_queued(now);
    }

    /// The answer to request `id`: the payload, or why there is none.
    pub fn handle_response(
        &mut self,
        id: RequestId,
        answer: Result<Bytes, NetError>,
        now: Instant,
    ) {
        let Some(cid) = self.requests.remove(&id) else {
            return;
        };
        let Some(job) = self.jobs.get_mut(&cid) else {
            return;
        };
        match &mut job.phase {
            Phase::Asking { peer, id: asked } if *asked == id => {
                let peer = *peer;
                job.tried.insert(peer);
                match answer.map_err(TryError::Net).and_then(|p| decode_have(&p)) {
                    Ok(Some(size_bytes)) => self.begin_fetch(cid, peer, size_bytes),
                    Ok(None) => {
                        job.candidates.remove(&peer);
                        self.advance(cid, now);
                    }
                    Err(error) => self.peer_failed(cid, peer, error, now),
                }
            }
            Phase::Probing { outstanding } => {
                let Some(peer) = outstanding.remove(&id) else {
                    return;
                };
                let done = outstanding.is_empty();
                match answer.map(|p| decode_have(&p)) {
                    Ok(Ok(Some(_))) => {
                        job.candidates.insert(peer);
                    }
                    Err(NetError::Busy { .. }) => job.busy_in_round = true,
                    _ => {}
                }
                if done {
                    self.advance(cid, now);
                }
            }
            Phase::Fetching {
                peer,
                in_flight,
                arrived,
                written,
                ..
            } => {
                let peer = *peer;
                let Some((offset, chunk_len)) = in_flight.remove(&id) else {
                    return;
                };
                let chunk = match answer {
                    Ok(chunk) => chunk,
                    Err(error) => {
                        self.actions.push_back(Action::AbortWrite { cid });
                        return self.peer_failed(cid, peer, TryError::Net(error), now);
                    }
                };
                if chunk.len() as u64 != chunk_len {
                    let error = TryError::ShortChunk {
                        sent_bytes: chunk.len(),
                        len: chunk_len,
                        offset,
                    };
                    self.actions.push_back(Action::AbortWrite { cid });
                    return self.peer_failed(cid, peer, error, now);
                }
                arrived.insert(offset, chunk);
                // Hand over every chunk that is next in order.
                while let Some(chunk) = arrived.remove(written) {
                    *written += chunk.len() as u64;
                    self.actions.push_back(Action::Write { cid, chunk });
                }
                self.next_chunks(cid);
            }
            _ => {}
        }
    }

    /// How finishing the write of `cid` went.
    pub fn handle_write_finished(&mut self, cid: Cid, outcome: WriteOutcome, now: Instant) {
        let Some(job) = self.jobs.get_mut(&cid) else {
            return;
        };
        let Phase::Verifying { peer } = job.phase else {
            return;
        };
        match outcome {
            WriteOutcome::Stored => {
                let rejected = job.rejected.iter().copied().collect();
                self.jobs.remove(&cid);
                self.actions.push_back(Action::Fetched {
                    cid,
                    from: peer,
                    rejected,
                });
                self.start_queued(now);
            }
            WriteOutcome::Mismatch => {
                tracing::warn!(peer = %peer, cid = %cid, "blob replication: peer offered a corrupt blob (its content does not hash to the CID); rejected, trying another holder");
                self.peer_failed(cid, peer, TryError::Corrupt, now);
            }
            WriteOutcome::LocalError(reason) => {
                let attempts = job.attempts;
                self.jobs.remove(&cid);
                self.actions.push_back(Action::Failed {
                    cid,
                    attempts,
                    reason: format!("the local store failed: {reason}"),
                });
                self.start_queued(now);
            }
        }
    }

    fn start_queued(&mut self, now: Instant) {
        let limit = if crate::bugs::active(crate::bugs::Bug::ExceedFetchLimit) {
            usize::MAX
        } else {
            self.config.max_concurrent_fetches
        };
        loop {
            let active = self.jobs.values().filter(|j| j.is_active()).count();
            if active >= limit {
                return;
            }
            let Some(cid) = self.queue.pop_front() else {
                return;
            };
            if self
                .jobs
                .get(&cid)
                .is_some_and(|j| matches!(j.phase, Phase::Queued))
            {
                debug_assert!(
                    active < self.config.max_concurrent_fetches,
                    "starting a fetch with {active} under way breaks the limit of {} concurrent fetches",
                    self.config.max_concurrent_fetches
                );
                self.advance(cid, now);
            }
        }
    }

    /// Try the next source of `cid`.
    fn advance(&mut self, cid: Cid, now: Instant) {
        let Some(job) = self.jobs.get_mut(&cid) else {
            return;
        };
        if job.attempts >= self.config.max_attempts {
            let (attempts, reason) = (job.attempts, job.last_error.clone());
            self.jobs.remove(&cid);
            self.actions.push_back(Action::Failed {
                cid,
                attempts,
                reason,
            });
            self.start_queued(now);
            return;
        }
        let open = job
            .candidates
            .iter()
            .filter(|c| !job.tried.contains(c) && !job.rejected.contains(c))
            .copied();
        if let Some(peer) = placement::rank(&cid, open).first().copied() {
            let id = self.send(
                cid,
                peer,
                &BlobRequest::Have {
                    cid: cid.to_string(),
                },
            );
            if let Some(job) = self.jobs.get_mut(&cid) {
                job.phase = Phase::Asking { peer, id };
            }
            return;
        }
        if !job.probed {
            job.probed = true;
            let ask: Vec<NodeId> = self
                .peers
                .iter()
                .filter(|p| !job.rejected.contains(p) && !job.tried.contains(p))
                .copied()
                .collect();
            if !ask.is_empty() {
                let mut outstanding = BTreeMap::new();
                for peer in ask {
                    let id = self.send(
                        cid,
                        peer,
                        &BlobRequest::Have {
                            cid: cid.to_string(),
                        },
                    );
                    outstanding.insert(id, peer);
                }
                if let Some(job) = self.jobs.get_mut(&cid) {
                    job.phase = Phase::Probing { outstanding };
                }
                return;
            }
        }
        // Nobody had it this round: wait, then start a new round. A busy
        // holder may have it: that round is not a failed try.
        if job.busy_in_round && job.busy_rounds < self.config.max_busy_rounds {
            job.busy_rounds += 1;
            job.phase = Phase::Backoff {
                until: now + self.config.retry_delay,
            };
            return self.start_queued(now);
        }
        job.attempts += 1;
        if job.last_error.is_empty() {
            job.last_error = "no connected peer holds it".into();
        }
        if job.attempts >= self.config.max_attempts {
            return self.advance(cid, now);
        }
        job.phase = Phase::Backoff {
            until: now + self.config.retry_delay,
        };
        self.start_queued(now);
    }

    fn begin_fetch(&mut self, cid: Cid, peer: NodeId, size_bytes: u64) {
        self.actions.push_back(Action::StartWrite { cid });
        if let Some(job) = self.jobs.get_mut(&cid) {
            job.phase = Phase::Fetching {
                peer,
                size_bytes,
                next_offset: 0,
                written: 0,
                in_flight: BTreeMap::new(),
                arrived: BTreeMap::new(),
            };
        }
        self.next_chunks(cid);
    }

    /// Keep `chunks_in_flight` `Get`s of `cid` under way, or finish when
    /// every byte has been written.
    fn next_chunks(&mut self, cid: Cid) {
        let (chunk_bytes, depth) = (
            self.config.chunk_bytes as u64,
            self.config.chunks_in_flight.max(1),
        );
        loop {
            let Some(Job {
                phase:
                    Phase::Fetching {
                        peer,
                        size_bytes,
                        next_offset,
                        written,
                        in_flight,
                        ..
                    },
                ..
            }) = self.jobs.get_mut(&cid)
            else {
                return;
            };
            let (peer, size_bytes) = (*peer, *size_bytes);
            debug_assert!(*written <= size_bytes && *next_offset <= size_bytes);
            if *written >= size_bytes {
                self.actions.push_back(Action::FinishWrite { cid });
                if let Some(job) = self.jobs.get_mut(&cid) {
                    job.phase = Phase::Verifying { peer };
                }
                return;
            }
            if *next_offset >= size_bytes || in_flight.len() >= depth {
                return;
            }
            let offset = *next_offset;
            let len = (size_bytes - offset).min(chunk_bytes);
            *next_offset += len;
            let id = self.send(
                cid,
                peer,
                &BlobRequest::Get {
                    cid: cid.to_string(),
                    offset,
                    len,
                },
            );
            if let Some(Job {
                phase: Phase::Fetching { in_flight, .. },
                ..
            }) = self.jobs.get_mut(&cid)
            {
                in_flight.insert(id, (offset, len));
            }
        }
    }

    fn peer_failed(&mut self, cid: Cid, peer: NodeId, error: TryError, now: Instant) {
        let Some(job) = self.jobs.get_mut(&cid) else {
            return;
        };
        tracing::debug!(peer = %peer, cid = %cid, reason = %error, "blob replication: try failed");
        job.tried.insert(peer);
        if error.is_busy() {
            // Ask another holder now; this one again next round.
            job.busy_in_round = true;
            if job.last_error.is_empty() {
                job.last_error = format!("peer {peer}: {error}");
            }
            return self.advance(cid, now);
        }
        job.attempts += 1;
        job.last_error = format!("peer {peer}: {error}");
        if error.rejects_peer() {
            job.rejected.insert(peer);
        }
        self.advance(cid, now);
    }

    fn send(&mut self, cid: Cid, peer: NodeId, request: &BlobRequest) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        // Serialising these plain enums cannot fail.
        let payload = serde_json::to_vec(request).unwrap_or_default();
        self.requests.insert(id, cid);
        self.actions.push_back(Action::Send {
            id,
            peer,
            payload: Bytes::from(payload),
        });
        id
    }
}

fn decode_have(payload: &[u8]) -> Result<Option<u64>, TryError> {
    serde_json::from_slice::<HaveReply>(payload)
        .map(|r| r.size_bytes)
        .map_err(TryError::BadHave)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::cid_of;

    fn node(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    fn have(size: Option<u64>) -> Bytes {
        Bytes::from(serde_json::to_vec(&HaveReply { size_bytes: size }).unwrap())
    }

    fn drain(core: &mut ReplicateCore) -> Vec<Action> {
        std::iter::from_fn(|| core.poll_action()).collect()
    }

    fn sends(actions: &[Action]) -> Vec<(RequestId, NodeId, BlobRequest)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { id, peer, payload } => {
                    Some((*id, *peer, serde_json::from_slice(payload).unwrap()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn fetches_in_chunks_and_reports() {
        let now = tokio::time::Instant::now().into_std();
        let config = ReplicateConfig {
            chunk_bytes: 4,
            chunks_in_flight: 1,
            ..Default::default()
        };
        let mut core = ReplicateCore::new(node(1), config);
        let cid = cid_of(b"0123456789");
        core.handle_want(cid, BTreeSet::from([node(2)]), now);
        let s = sends(&drain(&mut core));
        assert_eq!(s.len(), 1);
        assert!(matches!(s[0].2, BlobRequest::Have { .. }));
        core.handle_response(s[0].0, Ok(have(Some(10))), now);
        let mut lens = vec![];
        loop {
            let actions = drain(&mut core);
            if actions
                .iter()
                .any(|a| matches!(a, Action::FinishWrite { .. }))
            {
                break;
            }
            let s = sends(&actions);
            let (id, _, BlobRequest::Get { offset, len, .. }) = s[0].clone() else {
                panic!("expected a Get: {actions:?}")
            };
            lens.push(len);
            let data = &b"0123456789"[offset as usize..(offset + len) as usize];
            core.handle_response(id, Ok(Bytes::copy_from_slice(data)), now);
        }
        assert_eq!(lens, vec![4, 4, 2]);
        core.handle_write_finished(cid, WriteOutcome::Stored, now);
        assert_eq!(
            drain(&mut core),
            vec![Action::Fetched {
                cid,
                from: node(2),
                rejected: vec![]
            }]
        );
    }

    /// With several `Get`s in flight, chunks answered out of order are
    /// written in order, and the write finishes once all have arrived.
    #[test]
    fn pipelined_chunks_are_written_in_order() {
        let now = tokio::time::Instant::now().into_std();
        let data = b"0123456789abcdefghij";
        let config = ReplicateConfig {
            chunk_bytes: 4,
            chunks_in_flight: 3,
            ..Default::default()
        };
        let mut core = ReplicateCore::new(node(1), config);
        let cid = cid_of(data);
        core.handle_want(cid, BTreeSet::from([node(2)]), now);
        let s = sends(&drain(&mut core));
        core.handle_response(s[0].0, Ok(have(Some(data.len() as u64))), now);
        let answer = |core: &mut ReplicateCore, id, offset: u64, len: u64| {
            let chunk = &data[offset as usize..(offset + len) as usize];
            core.handle_response(id, Ok(Bytes::copy_from_slice(chunk)), now);
        };
        let mut pending: Vec<(RequestId, u64, u64)> = Vec::new();
        let mut written = Vec::new();
        let mut most_in_flight = 0;
        let mut finished = false;
        for round in 0.. {
            assert!(round < 20, "the fetch does not finish");
            for action in drain(&mut core) {
                match action {
                    Action::Send { id, payload, .. } => {
                        let BlobRequest::Get { offset, len, .. } =
                            serde_json::from_slice(&payload).unwrap()
                        else {
                            panic!("expected a Get")
                        };
                        pending.push((id, offset, len));
                    }
                    Action::Write { chunk, .. } => written.extend_from_slice(&chunk),
                    Action::FinishWrite { .. } => finished = true,
                    Action::StartWrite { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            most_in_flight = most_in_flight.max(pending.len());
            if finished {
                break;
            }
            // Answer the latest request first: out of order.
            let (id, offset, len) = pending.pop().expect("a request is in flight");
            answer(&mut core, id, offset, len);
        }
        assert_eq!(most_in_flight, 3);
        assert!(pending.is_empty());
        assert_eq!(written, data);
        core.handle_write_finished(cid, WriteOutcome::Stored, now);
        assert!(matches!(
            drain(&mut core).as_slice(),
            [Action::Fetched { .. }]
        ));
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let now = tokio::time::Instant::now().into_std();
        let config = ReplicateConfig {
            max_attempts: 2,
            retry_delay: Duration::from_secs(1),
            ..Default::default()
        };
        let mut core = ReplicateCore::new(node(1), config);
        let cid = cid_of(b"x");
        core.handle_want(cid, BTreeSet::new(), now);
        // No peers: backoff, then fail.
        assert!(drain(&mut core).is_empty());
        let t = core.poll_timeout().unwrap();
        core.handle_timeout(t);
        let actions = drain(&mut core);
        assert!(
            matches!(actions.as_slice(), [Action::Failed { attempts: 2, .. }]),
            "{actions:?}"
        );
    }

    /// A busy holder is skipped for the round, not rejected, and the try
    /// does not count: with `max_attempts: 1`, a fetch whose only holder
    /// is busy three times over still succeeds once the holder has room.
    #[test]
    fn busy_holder_is_asked_again_later_and_never_rejected() {
        let mut now = tokio::time::Instant::now().into_std();
        let config = ReplicateConfig {
            max_attempts: 1,
            retry_delay: Duration::from_secs(1),
            ..Default::default()
        };
        let mut core = ReplicateCore::new(node(1), config);
        core.handle_peer_up(node(2));
        let data = b"0123456789";
        let cid = cid_of(data);
        core.handle_want(cid, BTreeSet::from([node(2)]), now);
        let busy = || {
            Err(NetError::Busy {
                peer: node(2),
                reason: "busy: retry later".into(),
            })
        };
        for round in 0..3 {
            let s = sends(&drain(&mut core));
            assert_eq!(s.len(), 1, "round {round}: {s:?}");
            assert!(matches!(s[0].2, BlobRequest::Have { .. }));
            core.handle_response(s[0].0, busy(), now);
            // Nobody else to ask: back off, no failure.
            let actions = drain(&mut core);
            assert!(actions.is_empty(), "round {round}: {actions:?}");
            now = core.poll_timeout().expect("a retry is due");
            core.handle_timeout(now);
        }
        let s = sends(&drain(&mut core));
        core.handle_response(s[0].0, Ok(have(Some(10))), now);
        let actions = drain(&mut core);
        let s = sends(&actions);
        let (id, peer, BlobRequest::Get { .. }) = s[0].clone() else {
            panic!("expected a Get: {actions:?}")
        };
        assert_eq!(peer, node(2));
        // Busy in the middle of a blob: the write starts over, still no failure.
        core.handle_response(id, busy(), now);
        assert!(
            drain(&mut core)
                .iter()
                .all(|a| matches!(a, Action::AbortWrite { .. })),
        );
        now = core.poll_timeout().expect("a retry is due");
        core.handle_timeout(now);
        let s = sends(&drain(&mut core));
        core.handle_response(s[0].0, Ok(have(Some(10))), now);
        let s = sends(&drain(&mut core));
        core.handle_response(s[0].0, Ok(Bytes::from_static(data)), now);
        assert!(
            drain(&mut core)
                .iter()
                .any(|a| matches!(a, Action::FinishWrite { .. }))
        );
        core.handle_write_finished(cid, WriteOutcome::Stored, now);
        assert_eq!(
            drain(&mut core),
            vec![Action::Fetched {
                cid,
                from: node(2),
                rejected: vec![]
            }]
        );
    }

    /// Busy rounds are bounded: past `max_busy_rounds`, rounds count as
    /// failed tries again and the fetch gives up.
    #[test]
    fn busy_rounds_are_bounded() {
        let mut now = tokio::time::Instant::now().into_std();
        let config = ReplicateConfig {
            max_attempts: 1,
            max_busy_rounds: 2,
            retry_delay: Duration::from_secs(1),
            ..Default::default()
        };
        let mut core = ReplicateCore::new(node(1), config);
        let cid = cid_of(b"y");
        core.handle_want(cid, BTreeSet::from([node(2)]), now);
        for _ in 0..3 {
            let s = sends(&drain(&mut core));
            core.handle_response(
                s[0].0,
                Err(NetError::Busy {
                    peer: node(2),
                    reason: "busy".into(),
                }),
                now,
            );
            if let Some(at) = core.poll_timeout() {
                now = at;
                core.handle_timeout(now);
            }
        }
        let actions = drain(&mut core);
        assert!(
            matches!(actions.as_slice(), [Action::Failed { attempts: 1, reason, .. }] if reason.contains("busy")),
            "{actions:?}"
        );
    }
}
