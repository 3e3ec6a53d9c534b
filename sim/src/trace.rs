//! The trace of one run: everything that happened that an invariant may
//! need, in order, with a stable hash.
//!
//! Canonical encoding: one line of text per event (`Display`), fields in a
//! fixed order, maps in key order; the trace hash is sha256 over the lines,
//! each followed by `\n`. The same seed gives the same lines, so the same
//! hash; the trace file written on a violation is exactly these lines.

use std::fmt;

use sha2::{Digest, Sha256};

/// A node's index in the run (`n0`, `n1`, ...).
pub type NodeIx = usize;

/// One deployment as the trace names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub env: String,
    pub commit: String,
    pub seq: u64,
    /// The pushing node's id (hex of the first 8 bytes).
    pub by: String,
}

impl Version {
    /// The one-winner order: (seq, pushed_by).
    pub fn precedence(&self) -> (u64, &str) {
        (self.seq, &self.by)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "env={} commit={} seq={} by={}",
            self.env, self.commit, self.seq, self.by
        )
    }
}

/// Something that happened in a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The run's parameters drawn from the seed.
    Params(String),
    /// A node started: its first boot is 1, each restart counts one more.
    Boot {
        node: NodeIx,
        boot: u64,
    },
    Crash {
        node: NodeIx,
    },
    /// A node left for good (graceful stop); it is not healthy any more.
    Leave {
        node: NodeIx,
    },
    /// A function on `node` reported what it read of its clocks and
    /// random streams (`testfn`'s `entropy`): part of the trace, so a seed
    /// must replay every byte a guest reads. `None`: no function answered.
    GuestRead {
        node: NodeIx,
        read: Option<String>,
    },
    /// A network or disk fault began (`what` says which).
    Fault {
        what: String,
    },
    /// Every fault is healed and crashed nodes restarted.
    Healed,
    /// A `git push` of `commit` to `node` began (it may be lost to a crash).
    PushStarted {
        node: NodeIx,
        env: String,
        commit: String,
    },
    /// `node`'s Git remote refused a push (or the exchange failed).
    PushRefused {
        node: NodeIx,
        commit: String,
        reason: String,
    },
    /// `node`'s ledger recorded a push it built: it went live there with
    /// `version`'s precedence, acknowledged or not (a crash may come first).
    Recorded {
        node: NodeIx,
        version: Version,
    },
    /// A push was acknowledged (`node`'s Git remote answered `ok` for its
    /// branch) and its ledger recorded it as `version`.
    Push {
        node: NodeIx,
        version: Version,
        /// The CIDs of the push's content (site files, function).
        blobs: Vec<String>,
    },
    /// `node` asked `inviter` for an invite and presented it (`join/1`).
    JoinAttempt {
        node: NodeIx,
        inviter: NodeIx,
    },
    /// A join attempt failed; the node tries again with a fresh invite.
    JoinFailed {
        node: NodeIx,
        reason: String,
    },
    /// `node`'s own cluster state admits it.
    Joined {
        node: NodeIx,
    },
    /// `node` now serves `version` for its environment.
    Live {
        node: NodeIx,
        version: Version,
    },
    /// A request to `node` for `env` was answered: `served` is the version
    /// whose release answered (or `None`: nothing live yet, 404, or a
    /// refused corrupt copy, 503), `blobs_ok` whether the answer is the one
    /// that version's blobs give (the file's CID, the function's marker).
    Served {
        node: NodeIx,
        env: String,
        /// The path asked for (a file, or the function).
        path: String,
        served: Option<Version>,
        blobs_ok: bool,
    },
    /// `node` announced that it holds blob `cid`; `matches` tells whether
    /// its copy on disk hashes to `cid`.
    BlobHeld {
        node: NodeIx,
        cid: String,
        matches: bool,
    },
    /// A blob of the release `node` serves for `env` is not on its disk
    /// (neither stored nor quarantined): something removed it.
    LiveBlobMissing {
        node: NodeIx,
        env: String,
        cid: String,
    },
    /// Periodic sample of a node's cluster-state hash.
    Sample {
        node: NodeIx,
        state: String,
    },
    /// `node` (honest) acted on a record the rogue node forged: its view
    /// of cluster state holds it (`what` says which).
    ForgedAccepted {
        node: NodeIx,
        what: String,
    },
    /// `node` refuses the revoked project token (first time this boot).
    TokenRefused {
        node: NodeIx,
    },
    /// `node` took the project token again after refusing it as revoked
    /// in this boot.
    TokenAcceptedAgain {
        node: NodeIx,
    },
    /// At the end, `node` still takes the token revoked during the run.
    TokenStillAccepted {
        node: NodeIx,
    },
    /// A panic inside the simulation.
    Panic {
        message: String,
    },
    /// The run ended; `healthy` are the nodes up and not left.
    End {
        healthy: Vec<NodeIx>,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Params(p) => write!(f, "params {p}"),
            Event::Boot { node, boot } => write!(f, "boot n{node} #{boot}"),
            Event::Crash { node } => write!(f, "crash n{node}"),
            Event::Leave { node } => write!(f, "leave n{node}"),
            Event::Fault { what } => write!(f, "fault {what}"),
            Event::GuestRead { node, read } => match read {
                Some(read) => write!(f, "guest-read n{node} {read}"),
                None => write!(f, "guest-read n{node} none"),
            },
            Event::Healed => write!(f, "healed"),
            Event::PushStarted { node, env, commit } => {
                write!(f, "push-started n{node} env={env} commit={commit}")
            }
            Event::PushRefused {
                node,
                commit,
                reason,
            } => write!(f, "push-refused n{node} commit={commit} {reason:?}"),
            Event::Recorded { node, version } => write!(f, "recorded n{node} {version}"),
            Event::Push {
                node,
                version,
                blobs,
            } => write!(f, "push n{node} {version} blobs={}", blobs.join(",")),
            Event::JoinAttempt { node, inviter } => {
                write!(f, "join-attempt n{node} inviter=n{inviter}")
            }
            Event::JoinFailed { node, reason } => write!(f, "join-failed n{node} {reason:?}"),
            Event::Joined { node } => write!(f, "joined n{node}"),
            Event::Live { node, version } => write!(f, "live n{node} {version}"),
            Event::Served {
                node,
                env,
                path,
                served,
                blobs_ok,
            } => match served {
                Some(v) => write!(f, "served n{node} {path} {v} blobs_ok={blobs_ok}"),
                None => write!(f, "served n{node} {path} env={env} none"),
            },
            Event::BlobHeld { node, cid, matches } => {
                write!(f, "held n{node} {cid} matches={matches}")
            }
            Event::LiveBlobMissing { node, env, cid } => {
                write!(f, "live-blob-missing n{node} env={env} {cid}")
            }
            Event::Sample { node, state } => write!(f, "sample n{node} state={state}"),
            Event::ForgedAccepted { node, what } => write!(f, "forged-accepted n{node} {what}"),
            Event::TokenRefused { node } => write!(f, "token-refused n{node}"),
            Event::TokenAcceptedAgain { node } => write!(f, "token-accepted-again n{node}"),
            Event::TokenStillAccepted { node } => write!(f, "token-still-accepted n{node}"),
            Event::Panic { message } => write!(f, "panic {message:?}"),
            Event::End { healthy } => {
                let names: Vec<String> = healthy.iter().map(|n| format!("n{n}")).collect();
                write!(f, "end healthy={}", names.join(","))
            }
        }
    }
}

/// An event at a simulated time (milliseconds since the run began).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub at_ms: u64,
    pub event: Event,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>8} {}", self.at_ms, self.event)
    }
}

/// A run's trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    pub entries: Vec<Entry>,
}

impl Trace {
    pub fn push(&mut self, at_ms: u64, event: Event) {
        self.entries.push(Entry { at_ms, event });
    }

    /// The canonical text: one line per entry.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            out.push_str(&e.to_string());
            out.push('\n');
        }
        out
    }

    /// sha256 of the canonical text, in hex.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        for e in &self.entries {
            h.update(e.to_string().as_bytes());
            h.update(b"\n");
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}
