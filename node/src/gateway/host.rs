//! Which host a request is for.
//!
//! HTTP/2 carries it in `:authority` (the URI's authority); HTTP/1.1 in the
//! `Host` header (or in an absolute-form request target, which wins). Hosts
//! are compared lowercase, without port and without a trailing dot.

/// Longest host name kept (DNS names are at most 253 characters).
const MAX_HOST_BYTES: usize = 253;

/// The normalized host a request is addressed to, if it names one.
pub fn request_host<B>(req: &http::Request<B>) -> Option<String> {
    if let Some(authority) = req.uri().authority() {
        return Some(normalize_host(authority.host()));
    }
    let header = req.headers().get(http::header::HOST)?.to_str().ok()?;
    let host = normalize_host(header);
    if host.is_empty() { None } else { Some(host) }
}

/// `Shop.Localhost:8080` → `shop.localhost`; `[::1]:80` → `[::1]`;
/// `example.com.` → `example.com`. Over-long input is cut, so it can never
/// match a real host.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        // IPv6 literal: keep through the closing bracket.
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    let name = without_port.strip_suffix('.').unwrap_or(without_port);
    let mut end = name.len().min(MAX_HOST_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize_host("Shop.Localhost:8080"), "shop.localhost");
        assert_eq!(normalize_host("shop.localhost"), "shop.localhost");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("127.0.0.1:80"), "127.0.0.1");
        assert_eq!(normalize_host(&"a".repeat(1000)).len(), MAX_HOST_BYTES);
    }

    #[test]
    fn authority_wins_over_host_header() {
        let req = http::Request::get("http://dev.shop.localhost:1234/x")
            .header("host", "other.localhost")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("dev.shop.localhost"));
        let req = http::Request::get("/x")
            .header("host", "Shop.localhost:99")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("shop.localhost"));
        let req = http::Request::get("/x").body(()).unwrap();
        assert_eq!(request_host(&req), None);
    }
}
