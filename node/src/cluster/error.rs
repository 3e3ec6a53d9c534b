//! The errors of the cluster module.

use crate::net::NodeId;

/// What went wrong in cluster state, sync or replication, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The saved cluster-state document could not be read.
    #[error(
        "cluster state: the saved document is unreadable: {0} (move the file aside; the node re-syncs the state from its peers)"
    )]
    Load(#[source] Box<automerge::AutomergeError>),

    /// Writing to the cluster-state document failed.
    #[error("cluster state: could not {action}: {source}")]
    Write {
        action: &'static str,
        #[source]
        source: Box<automerge::AutomergeError>,
    },

    /// A record to be stored could not be encoded.
    #[error("cluster state: could not encode a {what} record: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// A peer sent a state-sync message that is not valid.
    #[error(
        "state sync: peer {peer} sent an invalid message: {reason} (its sync state was reset; check that it runs a compatible Canopy version)"
    )]
    BadSyncMessage { peer: NodeId, reason: String },

    /// A peer sent a blob-protocol message that is not valid.
    #[error("blob replication: peer {peer} sent an invalid message: {reason}")]
    BadBlobMessage { peer: NodeId, reason: String },

    /// The blob could not be fetched from any peer within the retry budget.
    #[error(
        "blob replication: could not fetch blob {cid} after {attempts} attempts: {reason} (check that a node holding it is up and reachable)"
    )]
    FetchFailed {
        cid: String,
        attempts: u32,
        reason: String,
    },

    /// An environment's candidates already use the last sequence number, so
    /// no push can rank above them.
    #[error(
        "cluster state: {env} has a deployment record at the last sequence number (written by node {written_by}); refusing the push rather than ranking it below every release (remove that node from the cluster)"
    )]
    SequenceExhausted { env: String, written_by: NodeId },

    /// This node is not (or no longer) in the cluster's admitted set, so no
    /// other node would act on what it records.
    #[error(
        "cluster: this node ({0}) is not admitted to the cluster, so it cannot record pushes; join it with `canopy node --join <invite>` or push to an admitted node"
    )]
    NotAdmitted(NodeId),

    /// A push or deletion came without a warrant from a token that may
    /// deploy its project, so no other node would follow it.
    #[error(
        "cluster: the push to {env} carries no warrant from a token allowed to deploy it (it was made without a token, or before this node joined the cluster); push it again with a project or admin token"
    )]
    Unwarranted { env: String },

    /// The driver task has stopped (the node is shutting down).
    #[error("cluster: the replication driver has stopped")]
    Stopped,
}
