//! Text forms of node ids and CIDs used inside cluster-state keys.

use cid::Cid;

use crate::net::NodeId;

/// A node id as 64 lower-case hex characters.
pub fn node_hex(node: &NodeId) -> String {
    let mut out = String::with_capacity(64);
    for b in node.0 {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Parse 64 hex characters back into a node id.
pub fn parse_node_hex(text: &str) -> Option<NodeId> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(NodeId(bytes))
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
}
