//! Per-peer request limits on the real libp2p network, between in-process
//! nodes on 127.0.0.1: an admitted peer over its bounds is answered busy at
//! once and stays connected, while other peers are served — their state
//! sync and blob fetches included.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use canopy_node::cluster::testing::{admit_test_node, founded_state, joined_state, test_key};
use canopy_node::cluster::{
    ClusterHandle, ClusterState, ReplicateConfig, ReplicateHandle, SyncConfig, SyncCore,
    replicate_channel, run_replicate, run_sync, split_events,
};
use canopy_node::env::Rng;
use canopy_node::net::identity::NodeKey;
use canopy_node::net::p2p::{Multiaddr, P2pConfig, P2pNet};
use canopy_node::net::peer_limits::PeerLimitsConfig;
use canopy_node::net::{Net, NetError, NetEvent, NodeId};
use canopy_node::store::BlobStore;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, watch};

/// Long enough for a loaded 2-core machine; every wait ends as soon as its
/// condition holds.
const DEADLINE: Duration = Duration::from_secs(30);

fn key(seed: u64) -> NodeKey {
    NodeKey::generate(&Rng::seeded(seed))
}

fn config(bootstrap: Vec<Multiaddr>, peer_limits: PeerLimitsConfig) -> P2pConfig {
    P2pConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap,
        mdns: false,
        cluster_secret: Some([9u8; 32]),
        quic: false,
        request_timeout: Duration::from_secs(10),
        handshake_timeout: Duration::from_secs(5),
        redial_interval: Duration::from_millis(200),
        peer_limits,
        ..P2pConfig::default()
    }
}

async fn start_net(
    key: &NodeKey,
    config: P2pConfig,
    admitted: BTreeSet<NodeId>,
) -> (
    P2pNet,
    mpsc::Receiver<NetEvent>,
    watch::Sender<BTreeSet<NodeId>>,
) {
    let (tx, rx) = watch::channel(admitted);
    let (net, events) = P2pNet::start(key, config, rx).await.unwrap();
    (net, events, tx)
}

/// Poll `cond` every 10 ms (tokio time) until it holds, or fail at the deadline.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn next_request(
    events: &mut mpsc::Receiver<NetEvent>,
) -> (NodeId, canopy_node::net::Responder) {
    let wait = async {
        loop {
            match events.recv().await {
                Some(NetEvent::Request { from, reply, .. }) => return (from, reply),
                Some(_) => {}
                None => panic!("the event stream ended"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .expect("a request within the deadline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_a_peers_in_flight_limit_are_answered_busy_and_others_are_served() {
    let (v_key, r_key, g_key) = (key(71), key(72), key(73));
    let all: BTreeSet<NodeId> = [&v_key, &r_key, &g_key]
        .iter()
        .map(|k| k.node_id())
        .collect();
    let limits = PeerLimitsConfig {
        max_in_flight: 4,
        ..PeerLimitsConfig::default()
    };
    let (v, mut v_events, _v_admitted) =
        start_net(&v_key, config(vec![], limits), all.clone()).await;
    let v_addr = v.listen_addrs()[0].clone();
    let (r, _r_events, _r_admitted) = start_net(
        &r_key,
        config(vec![v_addr.clone()], PeerLimitsConfig::default()),
        all.clone(),
    )
    .await;
    let (g, _g_events, _g_admitted) = start_net(
        &g_key,
        config(vec![v_addr], PeerLimitsConfig::default()),
        all,
    )
    .await;
    let (v_id, r_id, g_id) = (v_key.node_id(), r_key.node_id(), g_key.node_id());
    wait_until("R and G connected to V", || {
        let peers = v.peers();
        peers.contains(&r_id)
            && peers.contains(&g_id)
            && r.peers().contains(&v_id)
            && g.peers().contains(&v_id)
    })
    .await;

    // R opens 10 requests; V answers none yet: 4 reach V, 6 are busy at once.
    let mut rogue: FuturesUnordered<_> = (0..10u8)
        .map(|i| r.request(v_id, "hold/1", Bytes::from(vec![i])))
        .collect();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(next_request(&mut v_events).await);
    }
    assert!(held.iter().all(|(from, _)| *from == r_id));
    let mut busy = 0;
    while busy < 6 {
        let answer = tokio::time::timeout(DEADLINE, rogue.next())
            .await
            .expect("busy answers come at once")
            .expect("a request is left");
        match answer {
            Err(NetError::Busy { peer, reason }) => {
                assert_eq!(peer, v_id);
                assert!(
                    reason.contains("max_requests_in_flight_per_peer"),
                    "{reason}"
                );
                busy += 1;
            }
            other => panic!("expected busy, got {other:?}"),
        }
    }
    assert!(
        v_events.try_recv().is_err(),
        "nothing over the limit was queued"
    );

    // Another peer is served while R is at its limit.
    let g_ask = tokio::spawn({
        let g = g.clone();
        async move { g.request(v_id, "hold/1", Bytes::from_static(b"g")).await }
    });
    let (from, reply) = next_request(&mut v_events).await;
    assert_eq!(from, g_id);
    reply.ok(Bytes::from_static(b"for g"));
    assert_eq!(g_ask.await.unwrap().unwrap(), Bytes::from_static(b"for g"));

    // An answer frees one of R's slots: its next request gets through.
    let (_, reply) = held.pop().unwrap();
    reply.ok(Bytes::from_static(b"done"));
    let answered = tokio::time::timeout(DEADLINE, rogue.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answered.unwrap(), Bytes::from_static(b"done"));
    let again = tokio::spawn({
        let r = r.clone();
        async move {
            r.request(v_id, "hold/1", Bytes::from_static(b"again"))
                .await
        }
    });
    let (from, reply) = next_request(&mut v_events).await;
    assert_eq!(from, r_id);
    reply.ok(Bytes::from_static(b"again"));
    assert_eq!(again.await.unwrap().unwrap(), Bytes::from_static(b"again"));

    // R was never disconnected for it, and V counts what it refused.
    assert!(v.peers().contains(&r_id) && r.peers().contains(&v_id));
    let refusals = v.busy_refusals();
    assert_eq!(refusals.get(&r_id), Some(&6), "{refusals:?}");
    assert_eq!(refusals.get(&g_id), None, "{refusals:?}");
    drop(held);
}

/// A cluster side on libp2p: state sync and blob replication, as a node runs
/// them.
struct Side {
    id: NodeId,
    net: P2pNet,
    cluster: ClusterHandle,
    store: Arc<BlobStore>,
    replicate: ReplicateHandle,
    _admitted: watch::Sender<BTreeSet<NodeId>>,
    _dir: tempfile::TempDir,
}

async fn side(n: u8, state: ClusterState, config: P2pConfig, admitted: BTreeSet<NodeId>) -> Side {
    let key = test_key(n);
    let id = key.node_id();
    let (net, events, admitted) = start_net(&key, config, admitted).await;
    let cluster = ClusterHandle::new(SyncCore::new(state, SyncConfig::default()));
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(BlobStore::open(dir.path().join("store")).unwrap());
    let (sync_rx, blob_rx) = split_events(events);
    tokio::spawn(run_sync(cluster.clone(), net.clone(), sync_rx));
    let (replicate, commands) = replicate_channel();
    tokio::spawn(run_replicate(
        cluster.clone(),
        store.clone(),
        net.clone(),
        blob_rx,
        commands,
        ReplicateConfig {
            retry_delay: Duration::from_millis(200),
            ..ReplicateConfig::default()
        },
    ));
    Side {
        id,
        net,
        cluster,
        store,
        replicate,
        _admitted: admitted,
        _dir: dir,
    }
}

/// What the rogue's flood got back.
#[derive(Default)]
struct FloodStats {
    answered: AtomicU64,
    busy: AtomicU64,
    other: AtomicU64,
}

#[allow(
    clippy::print_stderr,
    reason = "the flood's figures help read a failure"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_refused_while_another_peer_syncs_and_fetches_a_blob() {
    // V founded the cluster and admitted G and the rogue R.
    let (v_id, g_id, r_id) = (
        test_key(1).node_id(),
        test_key(2).node_id(),
        test_key(3).node_id(),
    );
    let mut v_state = founded_state(1);
    let g_state = joined_state(2, &mut v_state);
    admit_test_node(&mut v_state, 3);
    // Tight limits on V, so the flood meets them within the test.
    let limits = PeerLimitsConfig {
        max_in_flight: 8,
        max_requests_per_second: 100,
        burst: 50,
    };
    let v = side(
        1,
        v_state,
        config(vec![], limits),
        BTreeSet::from([v_id, g_id, r_id]),
    )
    .await;
    let v_addr = v.net.listen_addrs()[0].clone();
    let g = side(
        2,
        g_state,
        config(vec![v_addr.clone()], PeerLimitsConfig::default()),
        BTreeSet::from([v_id, g_id]),
    )
    .await;
    // The rogue: admitted by V, it sends nothing but blob requests.
    let (r, _r_events, _r_admitted) = start_net(
        &test_key(3),
        config(vec![v_addr], PeerLimitsConfig::default()),
        BTreeSet::from([v_id, r_id]),
    )
    .await;
    wait_until("G and R connected to V", || {
        let peers = v.net.peers();
        peers.contains(&g_id) && peers.contains(&r_id) && r.peers().contains(&v_id)
    })
    .await;

    let stats = Arc::new(FloodStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let flood = tokio::spawn({
        let (r, stats, stop) = (r.clone(), stats.clone(), stop.clone());
        async move {
            let have = Bytes::from_static(
                br#"{"have":{"cid":"bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"}}"#,
            );
            let mut open = FuturesUnordered::new();
            while !stop.load(Ordering::Relaxed) {
                // 64 requests open at all times: 8 times V's bound.
                while open.len() < 64 {
                    open.push(r.request(v_id, "blob/1", have.clone()));
                }
                match open.next().await {
                    Some(Ok(_)) => stats.answered.fetch_add(1, Ordering::Relaxed),
                    Some(Err(NetError::Busy { .. })) => stats.busy.fetch_add(1, Ordering::Relaxed),
                    Some(Err(e)) => {
                        eprintln!("flood: {e}");
                        stats.other.fetch_add(1, Ordering::Relaxed)
                    }
                    None => 0,
                };
            }
        }
    });
    wait_until("the flood to meet V's limits", || {
        stats.busy.load(Ordering::Relaxed) >= 100
    })
    .await;

    // Under the flood: a blob V holds reaches G through state sync and a fetch.
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let cid = v.store.put(&blob).unwrap();
    v.cluster.update(|s| s.add_holder(&cid, v.id)).unwrap();
    wait_until("G to learn that V holds the blob", || {
        g.cluster.read(|s| s.holders(&cid).contains(&v.id))
    })
    .await;
    let report = tokio::time::timeout(DEADLINE, g.replicate.fetch(cid))
        .await
        .expect("the fetch ends within the deadline")
        .expect("G fetches the blob");
    assert_eq!(report.from, Some(v.id));
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert_eq!(g.store.get(&cid).unwrap(), blob);
    // G records itself as a holder: V learns it, and both states agree
    // (V's state is intact: every record of both sides is there).
    wait_until("V and G to converge", || {
        v.cluster.read(|s| s.holders(&cid).contains(&g.id))
            && v.cluster.read(|s| s.state_hash()) == g.cluster.read(|s| s.state_hash())
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(DEADLINE, flood)
        .await
        .unwrap()
        .unwrap();
    let (answered, busy, other) = (
        stats.answered.load(Ordering::Relaxed),
        stats.busy.load(Ordering::Relaxed),
        stats.other.load(Ordering::Relaxed),
    );
    eprintln!("flood: {answered} answered, {busy} busy, {other} other errors");
    assert!(busy >= 100, "{busy}");
    assert_eq!(other, 0, "the flood got only answers and busy refusals");
    // The rogue stays connected; only it was refused.
    assert!(v.net.peers().contains(&r_id));
    let refusals = v.net.busy_refusals();
    assert!(
        refusals.get(&r_id).is_some_and(|n| *n >= busy),
        "{refusals:?}"
    );
    assert_eq!(refusals.get(&g_id), None, "{refusals:?}");
}
