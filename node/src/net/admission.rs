//! Admission: invite tokens that let a new node join a cluster.
//!
//! `canopy cluster invite` on an admitted node produces an [`InviteToken`]:
//! the cluster it is for, who issued it, when it expires and a nonce, signed
//! with the inviter's node key and encoded as one copy-pasteable string. The
//! joining node presents it; an admitted node checks it with
//! [`InviteToken::verify`] before adding the newcomer's [`NodeId`] to the
//! admitted set in cluster state. This module owns the token format and its
//! checks; it does not own the admitted set (cluster state does) and never
//! reads the clock (the caller passes `now_unix_s`).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::NodeId;
use super::identity::{NodeKey, SIGNATURE_BYTES};
use crate::env::Rng;

/// What every token string starts with, so a wrong paste gets a clear error.
pub const TOKEN_PREFIX: &str = "canopy-invite-";

/// Format version inside the encoded bytes.
const TOKEN_VERSION: u8 = 1;

/// Domain separation: a token signature can never be mistaken for a
/// signature over anything else the node key signs.
const SIGNING_CONTEXT: &[u8] = b"canopy invite token v1\0";

const CLUSTER_ID_BYTES: usize = 16;
const NONCE_BYTES: usize = 16;
/// version + cluster id + inviter + expiry + nonce.
const SIGNED_BYTES: usize = 1 + CLUSTER_ID_BYTES + 32 + 8 + NONCE_BYTES;
const TOKEN_BYTES: usize = SIGNED_BYTES + SIGNATURE_BYTES;

/// A cluster's identity: random bytes chosen when the cluster is created.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterId(pub [u8; CLUSTER_ID_BYTES]);

impl ClusterId {
    /// A new cluster id drawn from the node's RNG.
    pub fn generate(rng: &Rng) -> Self {
        let mut bytes = [0u8; CLUSTER_ID_BYTES];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The id of the cluster `founder` founds with `nonce`: a hash of both,
    /// so whoever knows the id can check a claim to be its founder (the
    /// root every node's trust in cluster records starts from).
    pub fn derive(founder: &NodeId, nonce: &[u8; CLUSTER_NONCE_BYTES]) -> Self {
        use sha2::{Digest, Sha256};
        let mut sha = Sha256::new();
        sha.update(b"canopy cluster id v1\0");
        sha.update(founder.0);
        sha.update(nonce);
        let digest = sha.finalize();
        let mut bytes = [0u8; CLUSTER_ID_BYTES];
        bytes.copy_from_slice(&digest[..CLUSTER_ID_BYTES]);
        Self(bytes)
    }

    /// Parse the 32 hex digits [`ClusterId`]'s `Display` writes.
    pub fn parse(text: &str) -> Option<Self> {
        crate::cluster::parse_hex(text).map(Self)
    }
}

/// Bytes of the nonce a founder mixes into its cluster's id.
pub const CLUSTER_NONCE_BYTES: usize = 16;

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterId({self})")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    #[error(
        "this is not a Canopy invite token ({reason}); copy the whole string printed by `canopy cluster invite`"
    )]
    Malformed { reason: String },
    #[error(
        "the invite token's signature does not match its inviter {inviter}: it was altered or forged; ask for a new one"
    )]
    Forged { inviter: NodeId },
    #[error(
        "the invite token expired at {expires_at_unix_s} (unix seconds; now is {now_unix_s}); run `canopy cluster invite` again"
    )]
    Expired {
        expires_at_unix_s: u64,
        now_unix_s: u64,
    },
    #[error(
        "the invite token is for cluster {token_cluster}, but this is cluster {expected}; use a token from this cluster"
    )]
    WrongCluster {
        token_cluster: ClusterId,
        expected: ClusterId,
    },
    #[error(
        "the invite token was issued by {inviter}, which is not an admitted node of this cluster; ask an admitted node for a token"
    )]
    UnknownInviter { inviter: NodeId },
}

/// A signed invitation to join a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteToken {
    pub cluster_id: ClusterId,
    pub inviter: NodeId,
    pub expires_at_unix_s: u64,
    /// Makes each token unique, so cluster state can record it as used.
    pub nonce: [u8; NONCE_BYTES],
    pub signature: [u8; SIGNATURE_BYTES],
}

impl InviteToken {
    /// A token for `cluster_id`, signed by `inviter`, valid until
    /// `expires_at_unix_s`.
    pub fn issue(
        inviter: &NodeKey,
        cluster_id: ClusterId,
        expires_at_unix_s: u64,
        rng: &Rng,
    ) -> Self {
        let mut nonce = [0u8; NONCE_BYTES];
        rng.fill_bytes(&mut nonce);
        let mut token = Self {
            cluster_id,
            inviter: inviter.node_id(),
            expires_at_unix_s,
            nonce,
            signature: [0u8; SIGNATURE_BYTES],
        };
        token.signature = inviter.sign(&token.signing_input());
        debug_assert!(token.signature_is_valid());
        token
    }

    /// Check the token: signature, inviter, cluster, expiry (in that order, so
    /// a forged token is reported as forged whatever else it claims).
    pub fn verify(
        &self,
        now_unix_s: u64,
        expected_cluster: ClusterId,
        trusted_inviters: &BTreeSet<NodeId>,
    ) -> Result<(), InviteError> {
        if !self.signature_is_valid() {
            return Err(InviteError::Forged {
                inviter: self.inviter,
            });
        }
        if !trusted_inviters.contains(&self.inviter) {
            return Err(InviteError::UnknownInviter {
                inviter: self.inviter,
            });
        }
        if self.cluster_id != expected_cluster {
            return Err(InviteError::WrongCluster {
                token_cluster: self.cluster_id,
                expected: expected_cluster,
            });
        }
        if now_unix_s >= self.expires_at_unix_s {
            return Err(InviteError::Expired {
                expires_at_unix_s: self.expires_at_unix_s,
                now_unix_s,
            });
        }
        Ok(())
    }

    fn signature_is_valid(&self) -> bool {
        self.inviter.verify(&self.signing_input(), &self.signature)
    }

    /// The bytes the signature covers: everything but the signature, after a
    /// context string.
    fn signing_input(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIGNING_CONTEXT.len() + SIGNED_BYTES);
        out.extend_from_slice(SIGNING_CONTEXT);
        out.extend_from_slice(&self.signed_fields());
        out
    }

    fn signed_fields(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIGNED_BYTES);
        out.push(TOKEN_VERSION);
        out.extend_from_slice(&self.cluster_id.0);
        out.extend_from_slice(&self.inviter.0);
        out.extend_from_slice(&self.expires_at_unix_s.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        debug_assert_eq!(out.len(), SIGNED_BYTES);
        out
    }

    /// The token as one string: the prefix, then base64url of the fields and
    /// the signature.
    pub fn encode(&self) -> String {
        let mut bytes = self.signed_fields();
        bytes.extend_from_slice(&self.signature);
        debug_assert_eq!(bytes.len(), TOKEN_BYTES);
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Parse a string made by [`InviteToken::encode`]. Checks the format only;
    /// call [`InviteToken::verify`] to check the signature and the rest.
    pub fn decode(text: &str) -> Result<Self, InviteError> {
        let malformed = |reason: &str| InviteError::Malformed {
            reason: reason.to_owned(),
        };
        let body = text
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| malformed(&format!("it does not start with `{TOKEN_PREFIX}`")))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| malformed(&format!("bad base64url: {e}")))?;
        if bytes.len() != TOKEN_BYTES {
            return Err(malformed(&format!(
                "expected {TOKEN_BYTES} bytes, found {}",
                bytes.len()
            )));
        }
        if bytes[0] != TOKEN_VERSION {
            return Err(malformed(&format!(
                "token format version {} is not supported (this node reads version {TOKEN_VERSION})",
                bytes[0]
            )));
        }
        let mut rest = &bytes[1..];
        let mut take = |n: usize| {
            let (head, tail) = rest.split_at(n);
            rest = tail;
            head
        };
        let mut cluster = [0u8; CLUSTER_ID_BYTES];
        cluster.copy_from_slice(take(CLUSTER_ID_BYTES));
        let mut inviter = [0u8; 32];
        inviter.copy_from_slice(take(32));
        let mut expires = [0u8; 8];
        expires.copy_from_slice(take(8));
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(take(NONCE_BYTES));
        let mut signature = [0u8; SIGNATURE_BYTES];
        signature.copy_from_slice(take(SIGNATURE_BYTES));
        Ok(Self {
            cluster_id: ClusterId(cluster),
            inviter: NodeId(inviter),
            expires_at_unix_s: u64::from_be_bytes(expires),
            nonce,
            signature,
        })
    }
}

impl fmt::Display for InviteToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl FromStr for InviteToken {
    type Err = InviteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::decode(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (NodeKey, ClusterId, BTreeSet<NodeId>, Rng) {
        let rng = Rng::seeded(9);
        let inviter = NodeKey::generate(&rng);
        let cluster = ClusterId::generate(&rng);
        let trusted = BTreeSet::from([inviter.node_id()]);
        (inviter, cluster, trusted, rng)
    }

    #[test]
    fn valid_token_round_trips_and_verifies() {
        let (inviter, cluster, trusted, rng) = setup();
        let token = InviteToken::issue(&inviter, cluster, 1_000, &rng);
        let text = token.encode();
        assert!(text.starts_with(TOKEN_PREFIX));
        let back: InviteToken = text.parse().unwrap();
        assert_eq!(back, token);
        assert_eq!(back.verify(999, cluster, &trusted), Ok(()));
    }

    #[test]
    fn forged_token_is_rejected() {
        let (inviter, cluster, trusted, rng) = setup();
        let mut token = InviteToken::issue(&inviter, cluster, 1_000, &rng);
        // Extend the expiry without re-signing.
        token.expires_at_unix_s = u64::MAX;
        let back = InviteToken::decode(&token.encode()).unwrap();
        assert_eq!(
            back.verify(999, cluster, &trusted),
            Err(InviteError::Forged {
                inviter: inviter.node_id()
            })
        );
        // Signed by someone else but claiming the trusted inviter.
        let mallory = NodeKey::generate(&Rng::seeded(666));
        let mut stolen = InviteToken::issue(&mallory, cluster, 1_000, &rng);
        stolen.inviter = inviter.node_id();
        assert!(matches!(
            stolen.verify(999, cluster, &trusted),
            Err(InviteError::Forged { .. })
        ));
    }

    #[test]
    fn expired_token_is_rejected() {
        let (inviter, cluster, trusted, rng) = setup();
        let token = InviteToken::issue(&inviter, cluster, 1_000, &rng);
        let err = token.verify(1_000, cluster, &trusted).unwrap_err();
        assert_eq!(
            err,
            InviteError::Expired {
                expires_at_unix_s: 1_000,
                now_unix_s: 1_000
            }
        );
        assert!(err.to_string().contains("canopy cluster invite"));
    }

    #[test]
    fn wrong_cluster_is_rejected() {
        let (inviter, cluster, trusted, rng) = setup();
        let other = ClusterId::generate(&rng);
        let token = InviteToken::issue(&inviter, other, 1_000, &rng);
        assert_eq!(
            token.verify(1, cluster, &trusted),
            Err(InviteError::WrongCluster {
                token_cluster: other,
                expected: cluster
            })
        );
    }

    #[test]
    fn unknown_inviter_is_rejected() {
        let (_, cluster, trusted, rng) = setup();
        let stranger = NodeKey::generate(&Rng::seeded(77));
        let token = InviteToken::issue(&stranger, cluster, 1_000, &rng);
        assert_eq!(
            token.verify(1, cluster, &trusted),
            Err(InviteError::UnknownInviter {
                inviter: stranger.node_id()
            })
        );
    }

    #[test]
    fn malformed_strings_are_clear_errors() {
        for bad in ["", "hello", "canopy-invite-!!!", "canopy-invite-AAAA"] {
            let err = InviteToken::decode(bad).unwrap_err();
            assert!(matches!(err, InviteError::Malformed { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn nonces_differ() {
        let (inviter, cluster, _, rng) = setup();
        let a = InviteToken::issue(&inviter, cluster, 1_000, &rng);
        let b = InviteToken::issue(&inviter, cluster, 1_000, &rng);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.encode(), b.encode());
    }
}
