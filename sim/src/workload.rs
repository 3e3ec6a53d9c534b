//! The workload: what pushes of new deployments carry (a project whose
//! commit [`crate::git_push`] packs and the harness pushes to a random
//! admitted node) and requests to random nodes. (Joins and leaves are driven
//! by the harness, drawn from the run's [`crate::faults::Params`].)

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use canopy_node::deploy::hosts_of;
use canopy_node::deploy::state::EnvKey;
use canopy_node::env::Rng;
use canopy_node::gateway::Gateway;
use canopy_node::store::cid_of;
use canopy_node::test_guests::Guest;

use crate::faults::uniform;
use crate::git_push;
use crate::trace::{Event, NodeIx, Version};

/// The project every push deploys to.
pub const PROJECT: &str = "shop";
/// The environments pushes go to.
pub const BRANCHES: [&str; 2] = ["main", "dev"];

pub fn env_key(branch: &str) -> EnvKey {
    EnvKey {
        project: PROJECT.into(),
        branch: branch.into(),
    }
}

/// The function's route, and the path function requests ask for.
pub const FUNCTION_PATH: &str = "/fn/hello";
/// Below the function's route: `testfn` answers with what it reads of its
/// clocks and random streams.
pub const ENTROPY_PATH: &str = "/fn/hello/entropy";

/// What the harness knows of a push that reached a ledger.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub version: Version,
    /// The CIDs of its content: site files, then the function.
    pub blobs: Vec<String>,
    /// The CID of `file0.bin`, the file requests ask for.
    pub file0: String,
    /// The function's version marker.
    pub marker: u8,
}

/// Every push a ledger recorded, by (env, seq, pushed_by).
pub type Pushes = BTreeMap<(String, u64, String), Pushed>;

/// The project's `canopy.yaml`: the function (a prebuilt component in the
/// commit, so no build runs) on [`FUNCTION_PATH`] and a website at `/`.
pub const CANOPY_YAML: &str = "project: shop
functions:
  hello:
    wasm: functions/hello.wasm
    http: { path: /fn/hello }
    limits: { timeout: 10s, memory: 32MiB }
websites:
  www: { dir: public, path: / }
";

/// The files of a push's commit: `canopy.yaml`, the site under `public/`
/// and the function.
pub fn commit_files(site: &[(String, Vec<u8>)], function: Arc<Vec<u8>>) -> Vec<git_push::File> {
    let mut files = vec![(
        "canopy.yaml".to_string(),
        Arc::new(CANOPY_YAML.as_bytes().to_vec()),
    )];
    for (name, bytes) in site {
        files.push((format!("public/{name}"), Arc::new(bytes.clone())));
    }
    files.push(("functions/hello.wasm".to_string(), function));
    files
}

/// The CIDs of a push's content, as its `push` trace line lists them.
pub fn content_cids(site: &[(String, Vec<u8>)], function: &[u8]) -> Vec<String> {
    site.iter()
        .map(|(_, bytes)| cid_of(bytes).to_string())
        .chain([cid_of(function).to_string()])
        .collect()
}

/// The marker the test guest (`tests/guests/testfn`) embeds; versions of the
/// function are made by patching its last byte.
const MARKER: &[u8; 16] = b"CANOPY-VERSION-0";
/// Distinct function versions: few, so each is compiled once per process.
pub const FUNCTION_VERSIONS: u8 = 8;

/// The test guest, built for wasm32-wasip2: `$CANOPY_SIM_GUEST`, else
/// [`Guest::TESTFN`] built (a no-op when fresh, so a changed guest is never
/// simulated from a stale copy) under `$CARGO_TARGET_DIR/guests`, else the
/// copy already there.
pub fn guest_wasm() -> anyhow::Result<Vec<u8>> {
    static GUEST: std::sync::OnceLock<Result<Vec<u8>, String>> = std::sync::OnceLock::new();
    GUEST
        .get_or_init(|| find_or_build_guest().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

#[allow(
    clippy::print_stderr,
    reason = "a stale guest is worth a warning even when logging is off"
)]
fn find_or_build_guest() -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    if let Some(path) = std::env::var_os("CANOPY_SIM_GUEST") {
        return std::fs::read(&path).with_context(|| format!("read $CANOPY_SIM_GUEST {path:?}"));
    }
    let wasm = match Guest::TESTFN.build() {
        Ok(wasm) => wasm,
        Err(failure) => {
            let wasm = Guest::TESTFN.wasm_path();
            anyhow::ensure!(
                wasm.exists(),
                "{failure} (or set CANOPY_SIM_GUEST to a built testfn.wasm)"
            );
            eprintln!(
                "canopy-sim: could not rebuild tests/guests/testfn, using {}: {failure}",
                wasm.display()
            );
            wasm
        }
    };
    std::fs::read(&wasm).with_context(|| format!("read {}", wasm.display()))
}

/// Version `v` of the test guest.
pub fn guest_version(guest: &[u8], v: u8) -> Vec<u8> {
    let mut wasm = guest.to_vec();
    if let Some(at) = wasm.windows(MARKER.len()).position(|w| w == MARKER) {
        wasm[at + MARKER.len() - 1] = b'0' + v;
    }
    wasm
}

/// What the test guest answers on `.../hello` in version `v`.
pub fn hello_body(v: u8) -> String {
    let mut marker = *MARKER;
    marker[MARKER.len() - 1] = b'0' + v;
    format!(
        "hello from testfn VERSION:{}",
        String::from_utf8_lossy(&marker)
    )
}

/// The files of push number `n`: a website of one or two files of random
/// content and size.
pub fn push_files(rng: &Rng, seed: u64, n: u64, branch: &str) -> Vec<(String, Vec<u8>)> {
    (0..uniform(rng, 1, 2))
        .map(|i| {
            let mut bytes = format!("seed={seed} push={n} branch={branch} file={i}\n").into_bytes();
            let start = bytes.len();
            bytes.resize(start + uniform(rng, 512, 48 * 1024) as usize, 0);
            rng.fill_bytes(&mut bytes[start..]);
            (format!("file{i}.bin"), bytes)
        })
        .collect()
}

/// A request to `node` for `env`: a real HTTP/1.1 `GET` of the release's
/// first file or of its function (`/fn/hello`, run by wasmtime), answered by the node's gateway handler (`Gateway::handle`,
/// the code behind its listener) over an in-memory connection. The body
/// must be the file, or the function's answer, of the push the gateway's
/// route table names.
pub fn request(
    node: NodeIx,
    env: &EnvKey,
    function: bool,
    gateway: &Arc<Gateway>,
    pushes: &Pushes,
) -> Event {
    let host = hosts_of(env, &[]).remove(0);
    let site_commit = gateway.routes().site(&host).map(|s| s.commit.clone());
    let path = if function {
        FUNCTION_PATH
    } else {
        "/file0.bin"
    };
    // The request runs on a runtime of its own: blocking work may use
    // tokio's pool there (the static-file server streams from it).
    canopy_node::env::set_inline_blocking(false);
    let (status, body) = http_get(gateway.clone(), &host, path);
    canopy_node::env::set_inline_blocking(true);
    if status != http::StatusCode::OK {
        // 404 before anything is live, 503 when the node refuses a corrupt
        // copy: no release answered.
        return Event::Served {
            node,
            env: env.to_string(),
            path: path.to_string(),
            served: None,
            blobs_ok: true,
        };
    }
    let body_cid = cid_of(&body).to_string();
    // The push whose release answered: the one the route table names.
    let named = site_commit.and_then(|commit| {
        pushes
            .values()
            .find(|p| p.version.env == env.to_string() && p.version.commit == commit)
    });
    match named {
        Some(pushed) => Event::Served {
            node,
            env: env.to_string(),
            path: path.to_string(),
            served: Some(pushed.version.clone()),
            blobs_ok: if function {
                body == hello_body(pushed.marker).as_bytes()
            } else {
                pushed.file0 == body_cid
            },
        },
        None => Event::Served {
            node,
            env: env.to_string(),
            path: path.to_string(),
            served: Some(Version {
                env: env.to_string(),
                commit: format!("(body {body_cid})"),
                seq: 0,
                by: "(no such push)".into(),
            }),
            blobs_ok: true,
        },
    }
}

/// Ask `node`'s function what it reads of its clocks and random streams
/// (`testfn`'s `entropy` action, below the function's route).
pub fn guest_read(node: NodeIx, env: &EnvKey, gateway: &Arc<Gateway>) -> Event {
    let host = hosts_of(env, &[]).remove(0);
    canopy_node::env::set_inline_blocking(false);
    let (status, body) = http_get(gateway.clone(), &host, ENTROPY_PATH);
    canopy_node::env::set_inline_blocking(true);
    let read =
        (status == http::StatusCode::OK).then(|| String::from_utf8_lossy(&body).into_owned());
    Event::GuestRead { node, read }
}

/// `GET path` with `Host: host` through the gateway's handler, over an
/// in-memory HTTP/1.1 connection, on a runtime of its own: the request is
/// answered completely before the simulation goes on, so its blocking reads
/// (the static-file server's) cannot interleave with simulated tasks.
fn http_get(gateway: Arc<Gateway>, host: &str, path: &str) -> (http::StatusCode, Bytes) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime for one request");
    let request = http::Request::get(path)
        .header(http::header::HOST, host)
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("a valid request");
    runtime.block_on(async move {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let service = hyper::service::service_fn(move |req| {
            let gateway = gateway.clone();
            async move { Ok::<_, std::convert::Infallible>(gateway.handle(req).await) }
        });
        let server = tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(server_io), service),
        );
        let answer = async {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client_io))
                    .await
                    .ok()?;
            tokio::spawn(conn);
            let response = sender.send_request(request).await.ok()?;
            let status = response.status();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .ok()?
                .to_bytes();
            Some((status, body))
        }
        .await;
        server.abort();
        answer.unwrap_or((http::StatusCode::BAD_GATEWAY, Bytes::new()))
    })
}
