//! Issue 3's figures, "Many nodes, one cloud":
//!
//! - push to serving on every node of a real `canopy dream --nodes 5`: from
//!   `git push` returning on one node to the new version answering 200 on
//!   that node, and on all five;
//! - the RSS of each idle `canopy node` process, after start and after one
//!   deployed project;
//! - blob replication throughput between two nodes, in process, on the
//!   production path: two libp2p [`P2pNet`]s on 127.0.0.1 (TCP with the
//!   cluster secret, so pnet + noise + yamux), each with its own
//!   [`BlobStore`], state sync and the replication driver; the time of
//!   [`ReplicateHandle::fetch`] of a blob recorded as held by the other node,
//!   until it is on disk and verified.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use canopy_node::cluster::{
    ClusterHandle, ClusterState, ReplicateConfig, ReplicateHandle, SyncConfig, SyncCore,
    replicate_channel, run_replicate, run_sync, split_events,
};
use canopy_node::env::Rng;
use canopy_node::net::admission::ClusterId;
use canopy_node::net::identity::NodeKey;
use canopy_node::net::p2p::{P2pConfig, P2pNet};
use canopy_node::net::{Net, NodeId};
use canopy_node::store::BlobStore;
use canopy_tests::{Dream, NodeInfo, Project, testfn};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::load::{self, Target};
use crate::{Mode, load_avg, median, servers};

const YAML: &str =
    "project: shop\nfunctions:\n  t:\n    wasm: functions/t.wasm\n    http: { path: /t }\n";

fn addr(http: &str) -> Result<std::net::SocketAddr> {
    http.trim_start_matches("http://")
        .parse()
        .with_context(|| format!("{http} is http://IP:PORT"))
}

/// Poll `target` until it answers 200 with a body containing `expect`;
/// returns the time since `since`.
async fn serving(target: Target, expect: String, since: Instant) -> Result<Duration> {
    let deadline = since + Duration::from_secs(120);
    loop {
        if let Ok((_, _, 200, body)) = load::single(&target).await
            && String::from_utf8_lossy(&body).contains(&expect)
        {
            return Ok(since.elapsed());
        }
        if Instant::now() > deadline {
            bail!("{} did not serve {expect:?} within 120 s", target.addr);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn rss_of(nodes: &[NodeInfo]) -> Result<Vec<u64>> {
    nodes.iter().map(|n| servers::rss_bytes(n.pid)).collect()
}

fn rss_summary(rss: &[u64]) -> Value {
    let mean = rss.iter().sum::<u64>() as f64 / rss.len().max(1) as f64;
    json!({
        "per_node_bytes": rss,
        "mean_bytes": mean,
        "max_bytes": rss.iter().max(),
    })
}

/// A 5-node dream: RSS per idle node, then `mode.cluster_pushes` pushes of
/// never-seen versions to alternating nodes, each timed to 200 on the
/// pushed node and on all five, then RSS with the project deployed.
pub async fn five_nodes(mode: &Mode, canopy: &Path) -> Result<Value> {
    let load_at_start = load_avg();
    let data = tempfile::tempdir()?;
    let start = Instant::now();
    let dream = Dream::start_args(canopy, data.path(), &["--nodes", "5"])?;
    let ready_ms = start.elapsed().as_secs_f64() * 1000.0;
    let nodes = dream.nodes();
    ensure!(nodes.len() == 5, "dream.json lists {} nodes", nodes.len());
    // Idle: every node started, the cluster formed (each node sees four
    // peers), then a moment for start-up work to settle.
    canopy_tests::wait_for("five connected nodes", Duration::from_secs(120), || async {
        for node in &nodes {
            let status = node.status().await?;
            let peers = status["nodes"][0]["peers"].as_array().map_or(0, Vec::len);
            if peers < 4 {
                return None;
            }
        }
        Some(())
    })
    .await;
    let formed_ms = start.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss_of(&nodes)?;

    let project = Project::new()?;
    project.write("canopy.yaml", YAML);
    let targets: Vec<Target> = nodes
        .iter()
        .map(|n| {
            Ok(Target {
                addr: addr(&n.http)?,
                host: "shop.localhost".into(),
                path: "/t/hello".into(),
            })
        })
        .collect::<Result<_>>()?;
    let (mut on_pushed, mut on_all, mut push_ms, mut samples) = (vec![], vec![], vec![], vec![]);
    // Push 0 deploys the project the first time (not counted); pushes
    // 1..=n are the samples, each a version no node has seen (fetched and
    // compiled on every node).
    for i in 0..=mode.cluster_pushes {
        let version = format!("c5-{i}");
        let target_node = i % nodes.len();
        project.write("functions/t.wasm", testfn(&version));
        project.commit(&version)?;
        let push_start = Instant::now();
        project.push(&nodes[target_node].remote("shop"), "main")?;
        let pushed = Instant::now();
        let marker = format!("VERSION:{version}");
        let waits = targets
            .iter()
            .map(|t| tokio::spawn(serving(t.clone(), marker.clone(), pushed)));
        let mut per_node = Vec::new();
        for wait in waits.collect::<Vec<_>>() {
            per_node.push(wait.await??.as_secs_f64() * 1000.0);
        }
        if i == 0 {
            continue;
        }
        push_ms.push(pushed.duration_since(push_start).as_secs_f64() * 1000.0);
        let all = per_node.iter().copied().fold(0.0, f64::max);
        on_pushed.push(per_node[target_node]);
        on_all.push(all);
        samples.push(json!({
            "pushed_to": target_node,
            "per_node_ms": per_node,
        }));
    }
    // The project is live everywhere and each node has served it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_deployed = rss_of(&nodes)?;
    let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    Ok(json!({
        "load_avg_at_start": load_at_start,
        "load_avg_at_end": load_avg(),
        "nodes": 5,
        "start_to_ready_ms": ready_ms,
        "start_to_formed_ms": formed_ms,
        "pushes": mode.cluster_pushes,
        "git_push_ms_median": median(push_ms),
        "push_to_200_pushed_node_ms_median": median(on_pushed.clone()),
        "push_to_200_pushed_node_ms_max": max(&on_pushed),
        "push_to_200_all_nodes_ms_median": median(on_all.clone()),
        "push_to_200_all_nodes_ms_max": max(&on_all),
        "samples": samples,
        "rss_idle": rss_summary(&rss_idle),
        "rss_one_project": rss_summary(&rss_deployed),
    }))
}

/// One side of the replication pair.
struct Side {
    id: NodeId,
    net: P2pNet,
    cluster: ClusterHandle,
    store: Arc<BlobStore>,
    replicate: ReplicateHandle,
    _admitted: watch::Sender<BTreeSet<NodeId>>,
    _dir: tempfile::TempDir,
}

/// One side of the replication bench: it founds a cluster (`cluster`
/// `None`) or trusts the founder's (`Some`), as a joined node does.
async fn side(
    seed: u64,
    secret: [u8; 32],
    admitted: BTreeSet<NodeId>,
    bootstrap: Vec<canopy_node::net::p2p::Multiaddr>,
    cluster: Option<ClusterId>,
) -> Result<Side> {
    let key = NodeKey::generate(&Rng::seeded(seed));
    let id = key.node_id();
    let config = P2pConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        bootstrap,
        mdns: false,
        // Production runs TCP with the cluster secret (pnet);
        // `CANOPY_BENCH_NO_PNET=1` measures without it, for comparison.
        cluster_secret: (std::env::var_os("CANOPY_BENCH_NO_PNET").is_none()).then_some(secret),
        quic: false,
        redial_interval: Duration::from_millis(200),
        ..P2pConfig::default()
    };
    let (admitted_tx, admitted_rx) = watch::channel(admitted);
    let (net, events) = P2pNet::start(&key, config, admitted_rx).await?;
    let mut state = ClusterState::new(key.clone(), seed);
    match cluster {
        None => {
            state.found([seed as u8; 16])?;
        }
        Some(id) => state.pin(id),
    }
    let cluster = ClusterHandle::new(SyncCore::new(state, SyncConfig::default()));
    let dir = tempfile::tempdir()?;
    let store = Arc::new(BlobStore::open(dir.path().join("store"))?);
    let (sync_rx, blob_rx) = split_events(events);
    tokio::spawn(run_sync(cluster.clone(), net.clone(), sync_rx));
    let (replicate, commands) = replicate_channel();
    tokio::spawn(run_replicate(
        cluster.clone(),
        store.clone(),
        net.clone(),
        blob_rx,
        commands,
        replicate_config(),
    ));
    Ok(Side {
        id,
        net,
        cluster,
        store,
        replicate,
        _admitted: admitted_tx,
        _dir: dir,
    })
}

/// The transport's own throughput: `size_bytes` fetched in chunks of the
/// replication chunk size, `chunks_in_flight` at a time, from a libp2p peer
/// that answers from memory (no store, no disk, no hashing).
async fn transport_only(secret: [u8; 32], size_bytes: usize) -> Result<f64> {
    let config = replicate_config();
    let keys: Vec<NodeKey> = [11u64, 12]
        .iter()
        .map(|s| NodeKey::generate(&Rng::seeded(*s)))
        .collect();
    let ids: BTreeSet<NodeId> = keys.iter().map(NodeKey::node_id).collect();
    let p2p = |bootstrap| P2pConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("a multiaddr")],
        bootstrap,
        mdns: false,
        cluster_secret: (std::env::var_os("CANOPY_BENCH_NO_PNET").is_none()).then_some(secret),
        quic: false,
        redial_interval: Duration::from_millis(200),
        ..P2pConfig::default()
    };
    let (a_admitted, a_rx) = watch::channel(ids.clone());
    let (a, mut a_events) = P2pNet::start(&keys[0], p2p(vec![]), a_rx).await?;
    let chunk = bytes::Bytes::from(random_bytes(config.chunk_bytes, 5));
    let server = tokio::spawn(async move {
        while let Some(event) = a_events.recv().await {
            if let canopy_node::net::NetEvent::Request { reply, .. } = event {
                reply.ok(chunk.clone());
            }
        }
    });
    let a_addr = a.listen_addrs().first().cloned().context("A listens")?;
    let (b_admitted, b_rx) = watch::channel(ids);
    let (b, _b_events) = P2pNet::start(&keys[1], p2p(vec![a_addr]), b_rx).await?;
    let a_id = a.local_id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b.peers().contains(&a_id) {
        ensure!(Instant::now() < deadline, "the two nodes did not connect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let requests = size_bytes.div_ceil(config.chunk_bytes);
    let start = Instant::now();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut received = 0usize;
    for _ in 0..requests {
        if in_flight.len() >= config.chunks_in_flight {
            let answer: Result<bytes::Bytes, _> = futures::StreamExt::next(&mut in_flight)
                .await
                .context("a request in flight")?;
            received += answer?.len();
        }
        in_flight.push(b.request(a_id, "bench/1", bytes::Bytes::from_static(b"get")));
    }
    while let Some(answer) = futures::StreamExt::next(&mut in_flight).await {
        received += answer?.len();
    }
    let secs = start.elapsed().as_secs_f64();
    server.abort();
    drop((a_admitted, b_admitted));
    Ok(received as f64 / secs / 1e6)
}

/// The disk's and the hash's own cost: `size_bytes` written into a store
/// chunk by chunk as replication does, then verified and published.
async fn local_write(size_bytes: usize) -> Result<f64> {
    let config = replicate_config();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir()?;
        let store = BlobStore::open(dir.path())?;
        let bytes = random_bytes(size_bytes, 77);
        let cid = canopy_node::store::cid_of(&bytes);
        let start = Instant::now();
        let mut writer = store.begin_write(cid)?;
        for chunk in bytes.chunks(config.chunk_bytes) {
            writer.write_chunk(chunk)?;
        }
        store.finish_write(writer)?;
        Ok(size_bytes as f64 / start.elapsed().as_secs_f64() / 1e6)
    })
    .await?
}

/// The replication settings measured: the defaults, unless overridden for
/// exploration by `CANOPY_BENCH_CHUNK_KIB` / `CANOPY_BENCH_CHUNKS_IN_FLIGHT`.
fn replicate_config() -> ReplicateConfig {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
    };
    let default = ReplicateConfig::default();
    ReplicateConfig {
        replication_factor: Some(1),
        chunk_bytes: var("CANOPY_BENCH_CHUNK_KIB").map_or(default.chunk_bytes, |k| k << 10),
        chunks_in_flight: var("CANOPY_BENCH_CHUNKS_IN_FLIGHT").unwrap_or(default.chunks_in_flight),
        ..default
    }
}

/// Pseudo-random, incompressible bytes (xorshift64*), fast to make.
fn random_bytes(len: usize, mut x: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Fetch `runs` distinct blobs of `size_bytes` from A to B over libp2p.
pub async fn replication(size_bytes: usize, runs: usize) -> Result<Value> {
    let secret = [7u8; 32];
    let ids: BTreeSet<NodeId> = [1u64, 2]
        .iter()
        .map(|s| NodeKey::generate(&Rng::seeded(*s)).node_id())
        .collect();
    let a = side(1, secret, ids.clone(), vec![], None).await?;
    let a_addr = a.net.listen_addrs().first().cloned().context("A listens")?;
    let cluster = a
        .cluster
        .read(|s| s.cluster_id())
        .and_then(|id| ClusterId::parse(&id))
        .context("A founded a cluster")?;
    let b = side(2, secret, ids, vec![a_addr], Some(cluster)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(b.net.peers().contains(&a.id) && a.net.peers().contains(&b.id)) {
        ensure!(Instant::now() < deadline, "the two nodes did not connect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut results = Vec::new();
    for run in 0..runs {
        let bytes = random_bytes(size_bytes, 0x9e37_79b9_7f4a_7c15 + run as u64);
        let store = a.store.clone();
        let cid =
            tokio::task::spawn_blocking(move || store.put(&bytes).map_err(anyhow::Error::from))
                .await??;
        a.cluster.update(|s| s.add_holder(&cid, a.id))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !b.cluster.read(|s| s.holders(&cid).contains(&a.id)) {
            ensure!(Instant::now() < deadline, "state did not sync within 30 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let load = load_avg();
        let start = Instant::now();
        let report = b.replicate.fetch(cid).await?;
        let secs = start.elapsed().as_secs_f64();
        ensure!(
            report.from == Some(a.id),
            "fetched from {:?}, not A",
            report.from
        );
        ensure!(b.store.contains(&cid), "the blob is not in B's store");
        ensure!(
            b.store.size(&cid)? == size_bytes as u64,
            "B stored the wrong size"
        );
        let mb_s = size_bytes as f64 / secs / 1e6;
        eprintln!("  run {run}: {secs:.3} s, {mb_s:.0} MB/s (load {load})");
        results.push(json!({ "seconds": secs, "mb_per_s": mb_s, "load_avg": load }));
    }
    let rates: Vec<f64> = results
        .iter()
        .filter_map(|r| r["mb_per_s"].as_f64())
        .collect();
    eprintln!("  the floors: the same bytes through the transport alone, and written locally…");
    let transport = transport_only(secret, size_bytes).await?;
    let local_write = local_write(size_bytes).await?;
    let config = replicate_config();
    Ok(json!({
        "transport_only_mb_per_s": transport,
        "local_write_verify_mb_per_s": local_write,
        "blob_bytes": size_bytes,
        "load_avg_at_end": load_avg(),
        "runs": results,
        "mb_per_s_median": median(rates.clone()),
        "mb_per_s_best": rates.iter().copied().fold(f64::NAN, f64::max),
        "chunk_bytes": config.chunk_bytes,
        "chunks_in_flight": config.chunks_in_flight,
        "transport": if std::env::var_os("CANOPY_BENCH_NO_PNET").is_none() {
            "TCP 127.0.0.1, pnet (cluster secret), noise, yamux; libp2p request-response"
        } else {
            "TCP 127.0.0.1 WITHOUT pnet (CANOPY_BENCH_NO_PNET), noise, yamux"
        },
    }))
}
