//! Branch names as DNS labels, for preview hostnames
//! (`<label>.<project>.localhost`).

/// The longest DNS label (RFC 1035).
const MAX_LABEL_LEN: usize = 63;
/// Hex digits of the hash appended to labels that differ from their branch.
const HASH_HEX_LEN: usize = 8;

/// The DNS label for `branch`: lowercase, every character outside
/// `[a-z0-9-]` replaced by `-`, no leading or trailing `-`, at most 63
/// characters.
///
/// When the label is not the branch name itself (a character was lowered,
/// replaced or trimmed, or the name was too long), `-` and eight hex digits of
/// a fixed hash (FNV-1a, 64 bit) of the branch name are appended, so
/// `feature/x` and `feature-x` get different labels and the same branch
/// always gets the same label, on every node and every run.
///
/// ```
/// use canopy_node::git::branch_label;
/// assert_eq!(branch_label("main"), "main");
/// assert!(branch_label("feature/x").starts_with("feature-x-"));
/// ```
pub fn branch_label(branch: &str) -> String {
    let sanitized: String = branch
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = sanitized.trim_matches('-');
    if trimmed == branch && trimmed.len() <= MAX_LABEL_LEN && !trimmed.is_empty() {
        return trimmed.to_owned();
    }

    let hash = format!("{:016x}", fnv1a_64(branch.as_bytes()));
    let hash = &hash[..HASH_HEX_LEN];
    // Room for the base, a '-' and the hash; the base is ASCII, so byte
    // slicing is on char boundaries.
    let base_len_max = MAX_LABEL_LEN - 1 - HASH_HEX_LEN;
    let base = trimmed[..trimmed.len().min(base_len_max)].trim_end_matches('-');
    let label = if base.is_empty() {
        hash.to_owned()
    } else {
        format!("{base}-{hash}")
    };
    debug_assert!(label.len() <= MAX_LABEL_LEN);
    debug_assert!(!label.starts_with('-') && !label.ends_with('-'));
    label
}

/// FNV-1a, 64 bit: tiny, fixed, identical everywhere (unlike `DefaultHasher`).
fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_names_are_kept() {
        assert_eq!(branch_label("main"), "main");
        assert_eq!(branch_label("fix-42"), "fix-42");
    }

    #[test]
    fn changed_names_get_a_stable_hash() {
        let a = branch_label("feature/x");
        let b = branch_label("feature-x");
        assert_eq!(b, "feature-x");
        assert!(a.starts_with("feature-x-"), "{a}");
        assert_eq!(a.len(), "feature-x-".len() + HASH_HEX_LEN);
        assert_eq!(a, branch_label("feature/x"));
        assert_ne!(branch_label("Main"), "main");
        assert!(branch_label("Main").starts_with("main-"));
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn long_and_empty_names() {
        let long = "a".repeat(100);
        let label = branch_label(&long);
        assert_eq!(label.len(), MAX_LABEL_LEN);
        assert_ne!(label, branch_label(&"a".repeat(99)));
        let only_symbols = branch_label("///");
        assert_eq!(only_symbols.len(), HASH_HEX_LEN);
        assert_eq!(
            branch_label("-x-"),
            format!("x-{}", &format!("{:016x}", fnv1a_64(b"-x-"))[..8])
        );
    }

    proptest! {
        #[test]
        fn always_a_valid_dns_label(branch in ".{0,120}") {
            let label = branch_label(&branch);
            prop_assert!(!label.is_empty());
            prop_assert!(label.len() <= MAX_LABEL_LEN);
            prop_assert!(label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            prop_assert!(!label.starts_with('-') && !label.ends_with('-'));
        }
    }
}
