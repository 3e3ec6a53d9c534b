//! Text forms of node ids and CIDs used inside cluster-state keys.

use cid::Cid;

use crate::net::NodeId;

/// Bytes as lower-case hex, two characters a byte.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Parse exactly `2 * N` hex characters into `N` bytes.
pub fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; N];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(bytes)
}

/// A node id as 64 lower-case hex characters.
pub fn node_hex(node: &NodeId) -> String {
    hex(&node.0)
}

/// Parse 64 hex characters back into a node id.
pub fn parse_node_hex(text: &str) -> Option<NodeId> {
    parse_hex(text).map(NodeId)
}

/// Parse a CID string.
pub fn parse_cid(text: &str) -> Option<Cid> {
    Cid::try_from(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_hex_round_trips() {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        let node = NodeId(bytes);
        assert_eq!(parse_node_hex(&node_hex(&node)), Some(node));
        assert_eq!(parse_node_hex("zz"), None);
    }

    #[test]
    fn parse_hex_wants_exactly_n_bytes_of_hex() {
        assert_eq!(parse_hex::<2>("0aff"), Some([0x0a, 0xff]));
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
        assert_eq!(parse_hex::<2>("0aff00"), None, "too long");
        assert_eq!(parse_hex::<2>("0af"), None, "too short");
        assert_eq!(parse_hex::<2>("0agf"), None, "not hex");
        assert_eq!(parse_hex::<2>("é0af"), None, "not ASCII");
    }
}
