//! Which names the local CA certifies, and which hosts get HSTS.
//!
//! Dream must never mint a certificate for a real domain: a client that
//! trusts `ca.pem` would then trust this machine for that domain too. So the
//! CA certifies only `localhost`, names below `.localhost` (RFC 6761 keeps
//! them on the loopback interface) and loopback addresses.

use std::net::IpAddr;

/// DNS names are at most 253 characters (RFC 1035, without the final dot).
const MAX_NAME_BYTES: usize = 253;
/// A DNS label is at most 63 characters.
const MAX_LABEL_BYTES: usize = 63;

/// The names in the certificate served when a client sends no SNI (it
/// connected to an IP address such as `https://127.0.0.1:PORT`).
pub const NO_SNI_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Whether `name` (lowercase, no trailing dot) is `localhost` or a
/// well-formed DNS name ending in `.localhost`.
pub fn is_local_dns_name(name: &str) -> bool {
    if name.len() > MAX_NAME_BYTES {
        return false;
    }
    let Some(below) = name.strip_suffix("localhost") else {
        return false;
    };
    if below.is_empty() {
        return true;
    }
    let Some(labels) = below.strip_suffix('.') else {
        // `shoplocalhost`: not below `localhost`.
        return false;
    };
    labels.split('.').all(is_dns_label)
}

/// A letter-digit-hyphen label: 1–63 characters, no hyphen at either end.
fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL_BYTES
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// What certificate a client asking for `server_name` (its SNI, if any)
/// gets: the names to put in it, or `None` to refuse the handshake.
pub fn certificate_names(server_name: Option<&str>) -> Option<Vec<String>> {
    let Some(name) = server_name else {
        return Some(NO_SNI_NAMES.iter().map(|n| n.to_string()).collect());
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    // Some clients wrongly send an address as SNI: treat a loopback address
    // like no SNI, any other address like a foreign name.
    if let Ok(ip) = name.parse::<IpAddr>() {
        return ip
            .is_loopback()
            .then(|| NO_SNI_NAMES.iter().map(|n| n.to_string()).collect());
    }
    is_local_dns_name(&name).then(|| vec![name])
}

/// Whether a response to `host` (normalized: lowercase, no port) served
/// over TLS should carry `Strict-Transport-Security`. Not for localhost
/// names, which share one browser-wide HSTS entry with every local dev
/// server, nor for IP literals, which RFC 6797 §8.1 tells browsers to ignore.
pub fn wants_hsts(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    !host.is_empty() && bare.parse::<IpAddr>().is_err() && !is_local_dns_name(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names_are_certified() {
        for name in [
            "localhost",
            "shop.localhost",
            "dev.shop.localhost",
            "a-b.c1.localhost",
            "Shop.LOCALHOST",
            "shop.localhost.",
        ] {
            assert_eq!(
                certificate_names(Some(name)),
                Some(vec![
                    name.trim_end_matches('.').to_ascii_lowercase().to_string()
                ]),
                "{name}"
            );
        }
    }

    #[test]
    fn foreign_and_malformed_names_are_refused() {
        for name in [
            "example.com",
            "shop.example.com",
            "localhost.example.com",
            "shoplocalhost",
            ".localhost",
            "a..localhost",
            "-a.localhost",
            "a-.localhost",
            "a_b.localhost",
            "*.localhost",
            "10.0.0.1",
            "192.168.1.1",
            "",
        ] {
            assert_eq!(certificate_names(Some(name)), None, "{name:?}");
        }
        let long_label = format!("{}.localhost", "a".repeat(64));
        assert_eq!(certificate_names(Some(&long_label)), None);
        let long_name = format!("{}localhost", "abcdefghi.".repeat(25));
        assert!(long_name.len() > MAX_NAME_BYTES);
        assert_eq!(certificate_names(Some(&long_name)), None);
    }

    #[test]
    fn no_sni_or_loopback_gets_the_loopback_certificate() {
        let expected: Vec<String> = NO_SNI_NAMES.iter().map(|n| n.to_string()).collect();
        assert_eq!(certificate_names(None), Some(expected.clone()));
        assert_eq!(certificate_names(Some("127.0.0.1")), Some(expected.clone()));
        assert_eq!(certificate_names(Some("::1")), Some(expected));
    }

    #[test]
    fn hsts_only_for_real_domains() {
        assert!(wants_hsts("shop.example.com"));
        assert!(wants_hsts("example.com"));
        assert!(!wants_hsts("localhost"));
        assert!(!wants_hsts("shop.localhost"));
        assert!(!wants_hsts("dev.shop.localhost"));
        assert!(!wants_hsts("127.0.0.1"));
        assert!(!wants_hsts("[::1]"));
        assert!(!wants_hsts("203.0.113.9"));
        assert!(!wants_hsts(""));
    }
}
