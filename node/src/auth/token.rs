//! The token itself: `canopy_<id>_<secret>`, and the hash nodes keep of it.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::env::Rng;
use crate::net::NodeId;
use crate::net::identity::{NodeKey, SIGNATURE_BYTES};

/// Every token starts with this, so secret scanners and people recognise one.
const PREFIX: &str = "canopy_";
/// Bytes of a token's public id.
const ID_BYTES: usize = 8;
/// Bytes of a token's secret: 256 bits.
const SECRET_BYTES: usize = 32;

/// A token's public id: names it in `canopy token list`, logs and errors.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenId([u8; ID_BYTES]);

impl TokenId {
    pub fn from_bytes(bytes: [u8; ID_BYTES]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({self})")
    }
}

impl FromStr for TokenId {
    type Err = TokenFormatError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = decode_hex::<ID_BYTES>(text).ok_or(TokenFormatError::Id)?;
        Ok(Self(bytes))
    }
}

impl serde::Serialize for TokenId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TokenId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// SHA-256 of a token's secret: all a node keeps of it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    /// Compare in constant time, so response timing says nothing about how
    /// much of a guessed secret's hash was right.
    pub fn matches(&self, other: &SecretHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(…)")
    }
}

impl serde::Serialize for SecretHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        serializer.serialize_str(&hex)
    }
}

impl<'de> serde::Deserialize<'de> for SecretHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        decode_hex::<32>(&text)
            .map(SecretHash)
            .ok_or_else(|| serde::de::Error::custom("a secret hash is 64 hex digits"))
    }
}

/// Domain separation for [`Token::warrant_key`].
const WARRANT_KEY_CONTEXT: &[u8] = b"canopy token warrant key v1\0";

/// A token holder's signature on a cluster-state record: other nodes can
/// check that a person with that token asked for the write, not only that a
/// node wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "WarrantText", try_from = "WarrantText")]
pub struct Warrant {
    pub token: TokenId,
    /// The token's warrant key (public half).
    pub key: NodeId,
    pub signature: [u8; SIGNATURE_BYTES],
}

impl Warrant {
    /// Whether this warrant signs `message`.
    pub fn verifies(&self, message: &[u8]) -> bool {
        self.key.verify(message, &self.signature)
    }
}

/// A warrant as stored: hex strings.
#[derive(Serialize, Deserialize)]
struct WarrantText {
    token: String,
    key: String,
    sig: String,
}

impl From<Warrant> for WarrantText {
    fn from(w: Warrant) -> Self {
        Self {
            token: w.token.to_string(),
            key: crate::cluster::hex(&w.key.0),
            sig: crate::cluster::hex(&w.signature),
        }
    }
}

impl TryFrom<WarrantText> for Warrant {
    type Error = String;
    fn try_from(w: WarrantText) -> Result<Self, String> {
        Ok(Self {
            token: w
                .token
                .parse()
                .map_err(|_| "a warrant's token id is 16 hex digits")?,
            key: crate::cluster::parse_node_hex(&w.key)
                .ok_or("a warrant's key is 64 hex digits")?,
            signature: crate::cluster::parse_hex(&w.sig)
                .ok_or("a warrant's signature is 128 hex digits")?,
        })
    }
}

/// What a pusher's warrant signs: that the holder of the token pushed
/// `commit` (`None`: deleted the branch) to `project`'s `branch` through
/// node `node`. Naming the node keeps another node from replaying it.
pub fn push_statement(project: &str, branch: &str, commit: Option<&str>, node: &NodeId) -> Vec<u8> {
    let mut m = b"canopy push v1\0".to_vec();
    for part in [project, branch, commit.unwrap_or("")] {
        m.extend_from_slice(part.as_bytes());
        m.push(0);
    }
    m.extend_from_slice(&node.0);
    m
}

/// A whole token: what its holder presents. Never logged: `Debug` shows
/// the id only, and the text comes out of [`Token::reveal`] alone.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    id: TokenId,
    secret: [u8; SECRET_BYTES],
}

/// Why a text is not a Canopy token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenFormatError {
    #[error("it does not start with `canopy_`; use a token from `canopy token create`")]
    Prefix,
    #[error("its id is not 16 hex digits; copy the whole token")]
    Id,
    #[error("its secret is not 43 base64url characters; copy the whole token")]
    Secret,
}

impl Token {
    /// A new token from the node's randomness.
    pub fn generate(rng: &Rng) -> Self {
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut secret);
        Self {
            id: TokenId(id),
            secret,
        }
    }

    /// Parse a token as a person pasted it (surrounding whitespace allowed).
    pub fn parse(text: &str) -> Result<Self, TokenFormatError> {
        let rest = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(TokenFormatError::Prefix)?;
        let (id, secret) = rest.split_once('_').ok_or(TokenFormatError::Id)?;
        let id: TokenId = id.parse()?;
        let secret = URL_SAFE_NO_PAD
            .decode(secret)
            .ok()
            .and_then(|bytes| <[u8; SECRET_BYTES]>::try_from(bytes).ok())
            .ok_or(TokenFormatError::Secret)?;
        Ok(Self { id, secret })
    }

    pub fn id(&self) -> TokenId {
        self.id
    }

    /// The hash a node stores and compares against.
    pub fn secret_hash(&self) -> SecretHash {
        SecretHash(Sha256::digest(self.secret).into())
    }

    /// The key this token's holder signs warrants with: derived from the
    /// secret, so only whoever holds the token (or a node it was presented
    /// to) can make one. Its public half is kept in the token's record.
    pub fn warrant_key(&self) -> NodeKey {
        let mut sha = Sha256::new();
        sha.update(WARRANT_KEY_CONTEXT);
        sha.update(self.secret);
        NodeKey::from_secret_bytes(sha.finalize().into())
    }

    /// A warrant for `message`: proof that this token's holder asked for it.
    pub fn warrant(&self, message: &[u8]) -> Warrant {
        let key = self.warrant_key();
        Warrant {
            token: self.id,
            key: key.node_id(),
            signature: key.sign(message),
        }
    }

    /// The token's text, to show its holder once.
    pub fn reveal(&self) -> String {
        format!(
            "{PREFIX}{}_{}",
            self.id,
            URL_SAFE_NO_PAD.encode(self.secret)
        )
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}, secret: …)", self.id)
    }
}

fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::Rng;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest};

    #[test]
    fn a_token_is_prefixed_and_url_safe() {
        let token = Token::generate(&Rng::seeded(1));
        let text = token.reveal();
        assert!(text.starts_with("canopy_"), "{text}");
        assert_eq!(text.len(), PREFIX.len() + 16 + 1 + 43, "{text}");
        // It goes into URLs as `http://canopy:TOKEN@host/`.
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "{text}"
        );
        assert!(!format!("{token:?}").contains(&text[PREFIX.len() + 17..]));
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let good = Token::generate(&Rng::seeded(2)).reveal();
        assert_eq!(Token::parse("ghp_abc"), Err(TokenFormatError::Prefix));
        assert_eq!(Token::parse("canopy_zz_abc"), Err(TokenFormatError::Id));
        assert_eq!(
            Token::parse(&good[..good.len() - 1]),
            Err(TokenFormatError::Secret)
        );
        assert_eq!(Token::parse(&format!("  {good}\n")).unwrap().reveal(), good);
    }

    #[test]
    fn only_the_same_secret_matches() {
        let rng = Rng::seeded(3);
        let (a, b) = (Token::generate(&rng), Token::generate(&rng));
        assert!(a.secret_hash().matches(&a.secret_hash()));
        assert!(!a.secret_hash().matches(&b.secret_hash()));
    }

    proptest! {
        #[test]
        fn tokens_round_trip(id in any::<[u8; 8]>(), secret in any::<[u8; 32]>()) {
            let token = Token { id: TokenId(id), secret };
            prop_assert_eq!(Token::parse(&token.reveal()), Ok(token));
        }

        #[test]
        fn parsing_never_panics(text in ".{0,80}") {
            let _ = Token::parse(&text);
        }

        #[test]
        fn hashes_round_trip_through_json(bytes in any::<[u8; 32]>()) {
            let hash = SecretHash(bytes);
            let json = serde_json::to_string(&hash).unwrap();
            let back: SecretHash = serde_json::from_str(&json).unwrap();
            prop_assert!(back.matches(&hash));
        }
    }
}
