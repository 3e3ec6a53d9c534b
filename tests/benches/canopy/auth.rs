//! The token check every admin request and push pays: parse the
//! `Authorization` header, find the token's record, hash the secret
//! (SHA-256) and compare it in constant time, check expiry and revocation.
//! Measured in process against a book of 1 and of 1,000 tokens, for a
//! Bearer header and for Git's HTTP Basic. Serving a request checks no
//! token (the gateway is public), so it pays nothing.
//!
//! And what signed cluster records cost (`records`): a push's record on the
//! node it reached (the pusher's warrant, then the signed record written,
//! read back and checked), and on every other node, which verifies each
//! record it receives once (signature, warrant, author rules), measured as
//! the merge of a batch of pushes from another node, per push.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, ensure};
use canopy_node::auth::{Authority, Issuer, LocalBook, Principal, TokenBook};
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
                    Issuer::Node("bench"),
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

/// The cost of signed records: writing a push's record where it was
/// pushed, and taking pushes in from another node, per push.
pub fn records(pushes: usize) -> Result<Value> {
    use canopy_node::auth::push_statement;
    use canopy_node::cluster::DeploymentUpdate;
    use canopy_node::cluster::testing::{founded_state, joined_state, test_admin_token};
    use canopy_node::deploy::EnvKey;
    use canopy_node::store::cid_of;

    let admin = test_admin_token();
    let env = |n: usize| EnvKey {
        project: "shop".into(),
        branch: format!("b{}", n % 50),
    };
    let mut founder = founded_state(1);
    let mut pusher = joined_state(2, &mut founder);
    let node = pusher.local_id();
    // A push where it lands: the pusher's warrant (as the Git remote makes
    // it), the record signed, written and checked back.
    let start = Instant::now();
    for n in 0..pushes {
        let commit = format!("{n:040x}");
        let env = env(n);
        let warrant = admin.warrant(&push_statement(
            &env.project,
            &env.branch,
            Some(&commit),
            &node,
        ));
        pusher
            .apply_deployment(
                &env,
                DeploymentUpdate {
                    manifest_cid: cid_of(commit.as_bytes()),
                    artifacts: vec![],
                    warrant: Some(warrant),
                    commit,
                },
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let record_us = start.elapsed().as_secs_f64() * 1e6 / pushes as f64;
    // Every other node: the same pushes arrive by merge, each verified once.
    let mut follower = joined_state(3, &mut founder);
    let start = Instant::now();
    follower
        .merge(&mut pusher)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let follow_us = start.elapsed().as_secs_f64() * 1e6 / pushes as f64;
    ensure!(
        follower.deployments().len() == 50.min(pushes),
        "the follower takes every push"
    );
    // The primitives under both: one ed25519 signature and one check of a
    // record-sized message (what each signed record and warrant costs).
    let key = canopy_node::net::identity::NodeKey::from_secret_bytes([9; 32]);
    let message = vec![0x5a_u8; 300];
    let signature = key.sign(&message);
    let rounds = pushes.max(100);
    let start = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(key.sign(std::hint::black_box(&message)));
    }
    let sign_us = start.elapsed().as_secs_f64() * 1e6 / rounds as f64;
    let start = Instant::now();
    for _ in 0..rounds {
        ensure!(
            key.node_id()
                .verify(std::hint::black_box(&message), &signature)
        );
    }
    let verify_us = start.elapsed().as_secs_f64() * 1e6 / rounds as f64;
    Ok(json!({
        "sign_us": (sign_us * 10.0).round() / 10.0,
        "verify_us": (verify_us * 10.0).round() / 10.0,
        "pushes": pushes,
        "record_push_us": (record_us * 10.0).round() / 10.0,
        "receive_push_us": (follow_us * 10.0).round() / 10.0,
    }))
}
