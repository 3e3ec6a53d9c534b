//! Signed records: how every value in cluster state names its author.
//!
//! Each value is one JSON envelope:
//!
//! ```text
//! {"by": "<node hex>", "sig": "<hex>", "body": "<record JSON>",
//!  "warrant": {"token": "<token id>", "key": "<hex>", "sig": "<hex>"}}   ← when a person asked
//! ```
//!
//! `sig` is the author node's ed25519 signature, and a warrant's `sig` the
//! signature of the token's warrant key (see [`crate::auth::Token::warrant_key`]),
//! both over the same message: a context string, the record's key and its
//! body. Binding the key means a valid record cannot be replayed under
//! another key (another node's member record, another token id).
//!
//! Verifying a signature costs tens of microseconds, so
//! [`super::state::ClusterState`] verifies each envelope once, when it first
//! sees it, and keeps the verified view; readers never touch the raw
//! document. Whether an author may write a record of that kind is a separate
//! question, answered by [`super::trust`].

use serde::{Deserialize, Serialize};

use super::ids::{hex, parse_hex, parse_node_hex};
use crate::auth::Warrant;
use crate::net::NodeId;
use crate::net::identity::{NodeKey, SIGNATURE_BYTES};

/// Domain separation: a record signature is never valid as anything else.
const CONTEXT: &[u8] = b"canopy cluster record v1\0";

/// A record whose author's signature (and warrant's, if any) verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    pub by: NodeId,
    /// The record's JSON.
    pub body: String,
    /// The warrant of the token whose holder asked for this write, if one
    /// did (its signature verified).
    pub warrant: Option<Warrant>,
}

impl Signed {
    /// Whether this record removes its key (an empty body: no record's
    /// JSON is empty).
    pub fn is_tombstone(&self) -> bool {
        self.body.is_empty()
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    by: String,
    sig: String,
    body: String,
    /// The warrant carries the token's warrant key (public), so its
    /// signature can be checked before the token's own record is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    warrant: Option<Warrant>,
}

/// The message both signatures cover.
pub fn message(key: &str, body: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + key.len() + 1 + body.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(key.as_bytes());
    m.push(0);
    m.extend_from_slice(body.as_bytes());
    m
}

/// The envelope of `body` under `key`, signed by `author` (and warranted).
pub fn seal(author: &NodeKey, key: &str, body: String, warrant: Option<&Warrant>) -> String {
    let msg = message(key, &body);
    let envelope = Envelope {
        by: hex(&author.node_id().0),
        sig: hex(&author.sign(&msg)),
        body,
        warrant: warrant.cloned(),
    };
    serde_json::to_string(&envelope).expect("an envelope of strings serialises")
}

/// Why a value is not a record this node acts on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsigned {
    #[error("not a signed record envelope")]
    Malformed,
    #[error("the author's signature does not verify")]
    BadSignature,
    #[error("the warrant's signature does not verify")]
    BadWarrant,
}

/// Check `raw` (the value under `key`): its author's signature, and its
/// warrant's if it has one.
pub fn open(key: &str, raw: &str) -> Result<Signed, Unsigned> {
    let envelope: Envelope = serde_json::from_str(raw).map_err(|_| Unsigned::Malformed)?;
    let by = parse_node_hex(&envelope.by).ok_or(Unsigned::Malformed)?;
    let sig: [u8; SIGNATURE_BYTES] = parse_hex(&envelope.sig).ok_or(Unsigned::Malformed)?;
    let msg = message(key, &envelope.body);
    if !by.verify(&msg, &sig) {
        return Err(Unsigned::BadSignature);
    }
    if envelope.warrant.as_ref().is_some_and(|w| !w.verifies(&msg)) {
        return Err(Unsigned::BadWarrant);
    }
    Ok(Signed {
        by,
        body: envelope.body,
        warrant: envelope.warrant,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Token;
    use crate::env::Rng;

    fn key(n: u8) -> NodeKey {
        NodeKey::from_secret_bytes([n; 32])
    }

    #[test]
    fn a_sealed_record_opens_and_names_its_author() {
        let raw = seal(&key(1), "member/x", "{\"a\":1}".into(), None);
        let signed = open("member/x", &raw).unwrap();
        assert_eq!(signed.by, key(1).node_id());
        assert_eq!(signed.body, "{\"a\":1}");
        assert_eq!(signed.warrant, None);
    }

    #[test]
    fn a_record_moved_to_another_key_or_altered_does_not_open() {
        let raw = seal(&key(1), "member/x", "{}".into(), None);
        assert_eq!(open("member/y", &raw), Err(Unsigned::BadSignature));
        let altered = raw.replace("{}", "{\\\"evil\\\":1}");
        assert_eq!(open("member/x", &altered), Err(Unsigned::BadSignature));
        // Claiming another author: the signature is not theirs.
        let other = raw.replace(&hex(&key(1).node_id().0), &hex(&key(2).node_id().0));
        assert_eq!(open("member/x", &other), Err(Unsigned::BadSignature));
        assert_eq!(open("member/x", "true"), Err(Unsigned::Malformed));
    }

    #[test]
    fn a_warrant_verifies_with_the_tokens_key_only() {
        let token = Token::generate(&Rng::seeded(7));
        let msg = message("token/ab", "{}");
        let warrant = token.warrant(&msg);
        let raw = seal(&key(1), "token/ab", "{}".into(), Some(&warrant));
        let signed = open("token/ab", &raw).unwrap();
        let opened = signed.warrant.expect("the warrant is kept");
        assert_eq!(opened.token, token.id());
        assert_eq!(opened.key, token.warrant_key().node_id());
        // The same warrant on another record does not verify.
        let moved = seal(&key(1), "token/cd", "{}".into(), Some(&warrant));
        assert_eq!(open("token/cd", &moved), Err(Unsigned::BadWarrant));
    }
}
