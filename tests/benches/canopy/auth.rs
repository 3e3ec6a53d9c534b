//! The token check every admin request and push pays: parse the
//! `Authorization` header, find the token's record, hash the secret
//! (SHA-256) and compare it in constant time, check expiry and revocation.
//! Measured in process against a book of 1 and of 1,000 tokens, for a
//! Bearer header and for Git's HTTP Basic. Serving a request checks no
//! token (the gateway is public), so it pays nothing.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, ensure};
use canopy_node::auth::{Authority, LocalBook, Principal, TokenBook};
use canopy_node::env::{Clock, Rng, os_disk};
use http::{HeaderMap, HeaderValue, header};
use serde_json::{Value, json};

/// Nanoseconds per check of a valid token, averaged over `checks`.
fn per_check(authority: &Authority, headers: &HeaderMap, checks: usize) -> Result<f64> {
    // Warm the caches first.
    for _ in 0..checks / 10 + 1 {
        ensure!(
            authority.authenticate(headers).is_ok(),
            "the token checks out"
        );
    }
    let start = Instant::now();
    for _ in 0..checks {
        std::hint::black_box(authority.authenticate(std::hint::black_box(headers)))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(start.elapsed().as_nanos() as f64 / checks as f64)
}

pub fn measure(checks: usize) -> Result<Value> {
    let mut out = serde_json::Map::new();
    for tokens in [1usize, 1000] {
        let dir = tempfile::tempdir()?;
        let book: Arc<dyn TokenBook> =
            Arc::new(LocalBook::open(os_disk(), dir.path().join("tokens.json"))?);
        let authority = Authority::new(book, Clock::tokio(), Rng::seeded(7));
        let mut last = None;
        for i in 0..tokens {
            let (token, _) = authority
                .issue(
                    Principal::project("shop")?,
                    &format!("t{i}"),
                    None,
                    "bench".into(),
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            last = Some(token);
        }
        let token = last.expect("at least one token").reveal();
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
        let basic = {
            use base64::Engine as _;
            let pair = base64::engine::general_purpose::STANDARD.encode(format!("canopy:{token}"));
            let mut headers = HeaderMap::new();
            headers.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Basic {pair}"))?,
            );
            headers
        };
        out.insert(
            format!("tokens_{tokens}"),
            json!({
                "bearer_ns": per_check(&authority, &bearer, checks)?.round(),
                "basic_ns": per_check(&authority, &basic, checks)?.round(),
            }),
        );
    }
    Ok(Value::Object(out))
}
