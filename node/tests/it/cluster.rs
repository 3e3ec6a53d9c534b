//! Cluster state, sync and blob replication, over the in-memory net.

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use canopy_node::cluster::placement;
use canopy_node::cluster::testing::{
    MemoryHub, admit_test_node, founded_state, joined_state, push_warrant, test_key,
};
use canopy_node::cluster::{
    ClusterHandle, ClusterState, DeploymentUpdate, ReplicateConfig, ReplicateHandle, Role,
    StateHash, SyncConfig, SyncCore, replicate_channel, run_replicate, run_sync, split_events,
};
use canopy_node::deploy::state::EnvKey;
use canopy_node::net::{MAX_PAYLOAD_BYTES, NodeId};
use canopy_node::store::{BlobStore, cid_of};
use cid::Cid;
use proptest::prelude::*;

fn node(n: u8) -> NodeId {
    test_key(n).node_id()
}

fn env(branch: &str) -> EnvKey {
    EnvKey {
        project: "shop".into(),
        branch: branch.into(),
    }
}

/// Another incarnation of `state`'s node with the same document.
fn copy(state: &mut ClusterState, incarnation: u64) -> ClusterState {
    let key = (1..=16)
        .map(test_key)
        .find(|key| key.node_id() == state.local_id())
        .expect("test states belong to test keys");
    ClusterState::load(key, incarnation, &state.save()).unwrap()
}

/// Node `n`'s state, founded by node 1 (itself, if `n` is 1), with `n`
/// admitted: every node a test starts this way trusts the others once
/// their states meet.
fn member_state(n: u8, incarnation: u64) -> ClusterState {
    let mut founder = founded_state(1);
    if n != 1 {
        // Another incarnation of node 1 per admission, so that the states
        // of different nodes never reuse an (actor, seq) pair.
        founder = ClusterState::load(test_key(1), 100 + u64::from(n), &founder.save()).unwrap();
        admit_test_node(&mut founder, n);
    }
    ClusterState::load(test_key(n), incarnation, &founder.save()).unwrap()
}

// ----- merge properties ------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Deploy { doc: usize, branch: u8, commit: u8 },
    // A node writes only its own allocation and member records.
    AddHolder { doc: usize, blob: u8 },
    RemoveHolder { doc: usize, blob: u8 },
    Member { doc: usize, addr: u8 },
    RemoveBranch { doc: usize, branch: u8 },
    Sync { from: usize, to: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let doc = 0usize..3;
    prop_oneof![
        (doc.clone(), 0u8..2, any::<u8>()).prop_map(|(doc, branch, commit)| Op::Deploy {
            doc,
            branch,
            commit
        }),
        (doc.clone(), 0u8..3).prop_map(|(doc, blob)| Op::AddHolder { doc, blob }),
        (doc.clone(), 0u8..3).prop_map(|(doc, blob)| Op::RemoveHolder { doc, blob }),
        (doc.clone(), any::<u8>()).prop_map(|(doc, addr)| Op::Member { doc, addr }),
        (doc.clone(), 0u8..2).prop_map(|(doc, branch)| Op::RemoveBranch { doc, branch }),
        (doc.clone(), doc).prop_map(|(from, to)| Op::Sync { from, to }),
    ]
}

fn apply(docs: &mut [ClusterState], op: &Op) {
    match *op {
        Op::Deploy {
            doc,
            branch,
            commit,
        } => {
            let branch = if branch == 0 { "main" } else { "dev" };
            let own = docs[doc].local_id();
            let commit_name = format!("c{commit}");
            docs[doc]
                .apply_deployment(
                    &env(branch),
                    DeploymentUpdate {
                        warrant: Some(push_warrant(own, &env(branch), Some(&commit_name))),
                        commit: commit_name,
                        manifest_cid: cid_of(&[commit, 0]),
                        artifacts: vec![cid_of(&[commit, 1]), cid_of(&[commit, 2])],
                    },
                )
                .unwrap();
        }
        Op::AddHolder { doc, blob } => {
            let own = docs[doc].local_id();
            docs[doc].add_holder(&cid_of(&[blob]), own).unwrap()
        }
        Op::RemoveHolder { doc, blob } => {
            let own = docs[doc].local_id();
            docs[doc].remove_holder(&cid_of(&[blob]), own).unwrap()
        }
        Op::Member { doc, addr } => {
            let own = docs[doc].local_id();
            docs[doc]
                .upsert_member(own, vec![format!("10.0.0.{addr}:7000")], Role::Full, None)
                .unwrap()
        }
        Op::RemoveBranch { doc, branch } => {
            let branch = if branch == 0 { "main" } else { "dev" };
            let own = docs[doc].local_id();
            docs[doc]
                .remove_deployment(&env(branch), Some(&push_warrant(own, &env(branch), None)))
                .unwrap();
        }
        Op::Sync { from, to } => {
            if from != to {
                let mut source = copy(&mut docs[from], 99);
                docs[to].merge(&mut source).unwrap();
            }
        }
    }
}

fn three_docs() -> Vec<ClusterState> {
    let mut founder = founded_state(1);
    let two = joined_state(2, &mut founder);
    let three = joined_state(3, &mut founder);
    vec![founder, two, three]
}

/// The precedence of `env`'s winner, live or tombstone.
fn winner_precedence(s: &ClusterState, env: &canopy_node::deploy::EnvKey) -> Option<(u64, NodeId)> {
    s.deployment(env)
        .map(|d| d.precedence())
        .or_else(|| s.removed().get(env).copied())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// On every replica, the winner's precedence of an environment never
    /// goes down, whatever pushes, deletions and merges happen: a node that
    /// follows the winner never goes back to an older push.
    #[test]
    fn winner_precedence_only_grows(ops in proptest::collection::vec(op(), 0..60)) {
        let mut docs = three_docs();
        let envs = [env("main"), env("dev")];
        let mut seen: Vec<Vec<Option<(u64, NodeId)>>> = vec![vec![None; 2]; 3];
        for op in &ops {
            apply(&mut docs, op);
            for (d, doc) in docs.iter().enumerate() {
                for (e, env) in envs.iter().enumerate() {
                    let now = winner_precedence(doc, env);
                    prop_assert!(now >= seen[d][e], "{op:?}: precedence of {env} on doc {d} went from {:?} to {now:?}", seen[d][e]);
                    seen[d][e] = now;
                }
            }
        }
    }

    /// merge(a, b) == merge(b, a); merging twice changes nothing; merging the
    /// three replicas in any order gives the same state and hash.
    #[test]
    fn merge_is_commutative_idempotent_and_order_free(
        ops in proptest::collection::vec(op(), 0..40),
        order in Just([0usize, 1, 2]).prop_shuffle(),
    ) {
        let mut docs = three_docs();
        for op in &ops {
            apply(&mut docs, op);
        }
        let (a, b) = (0, 1);
        let mut ab = copy(&mut docs[a], 10);
        let mut b_copy = copy(&mut docs[b], 11);
        ab.merge(&mut b_copy).unwrap();
        let mut ba = copy(&mut docs[b], 12);
        let mut a_copy = copy(&mut docs[a], 13);
        ba.merge(&mut a_copy).unwrap();
        prop_assert_eq!(ab.state_hash(), ba.state_hash());
        prop_assert_eq!(ab.contents(), ba.contents());

        let once = ab.state_hash();
        ab.merge(&mut b_copy).unwrap();
        ab.merge(&mut a_copy).unwrap();
        prop_assert_eq!(ab.state_hash(), once);

        let mut in_order = member_state(9, 0);
        for i in [0, 1, 2] {
            let mut c = copy(&mut docs[i], 20);
            in_order.merge(&mut c).unwrap();
        }
        let mut shuffled = member_state(9, 1);
        for i in order {
            let mut c = copy(&mut docs[i], 21);
            shuffled.merge(&mut c).unwrap();
        }
        prop_assert_eq!(in_order.state_hash(), shuffled.state_hash());
        prop_assert_eq!(in_order.contents(), shuffled.contents());

        // The winner of every environment is one whole push: its manifest
        // and artifacts come from the same commit.
        for d in in_order.deployments().values() {
            let n: u8 = d.commit[1..].parse().unwrap();
            prop_assert_eq!(d.manifest_cid, cid_of(&[n, 0]));
            let mut want = vec![cid_of(&[n, 1]), cid_of(&[n, 2])];
            want.sort();
            prop_assert_eq!(&d.artifacts, &want);
        }
    }
}

#[test]
fn a_deletion_outranks_what_it_saw_and_a_later_push_outranks_the_deletion() {
    let push = |n: u8, commit: &str| DeploymentUpdate {
        commit: commit.into(),
        manifest_cid: cid_of(commit.as_bytes()),
        artifacts: vec![],
        warrant: Some(push_warrant(node(n), &env("dev"), Some(commit))),
    };
    let delete = |n: u8| push_warrant(node(n), &env("dev"), None);
    let mut a = founded_state(1);
    let mut b = joined_state(2, &mut a);
    a.apply_deployment(&env("dev"), push(1, "v1")).unwrap();
    let mut a1 = copy(&mut a, 1);
    b.merge(&mut a1).unwrap();
    // b deletes the branch: a tombstone above v1.
    let tombstone = b
        .remove_deployment(&env("dev"), Some(&delete(2)))
        .unwrap()
        .unwrap();
    assert!(tombstone > (1, node(1)));
    assert_eq!(b.deployment(&env("dev")), None);
    assert_eq!(b.removed().get(&env("dev")), Some(&tombstone));
    assert!(
        b.routes("localhost").is_empty(),
        "a deleted branch has no route"
    );
    // a, which still serves v1, learns of the deletion.
    let mut b1 = copy(&mut b, 1);
    a.merge(&mut b1).unwrap();
    assert_eq!(a.deployment(&env("dev")), None);
    // Deleting again changes nothing; a new push outranks the tombstone.
    assert_eq!(
        a.remove_deployment(&env("dev"), Some(&delete(1))).unwrap(),
        None
    );
    let v2 = a.apply_deployment(&env("dev"), push(1, "v2")).unwrap();
    assert!(v2.precedence() > tombstone);
    let mut a2 = copy(&mut a, 2);
    b.merge(&mut a2).unwrap();
    assert_eq!(b.deployment(&env("dev")).unwrap().commit, "v2");
    assert!(b.removed().is_empty());
}

#[test]
fn concurrent_pushes_of_one_branch_resolve_to_one_winner() {
    let mut a = founded_state(1);
    let mut b = joined_state(2, &mut a);
    let push = |n: u8, commit: &str| DeploymentUpdate {
        commit: commit.into(),
        manifest_cid: cid_of(commit.as_bytes()),
        artifacts: vec![cid_of(format!("{commit}-wasm").as_bytes())],
        warrant: Some(push_warrant(node(n), &env("main"), Some(commit))),
    };
    a.apply_deployment(&env("main"), push(1, "from-a")).unwrap();
    b.apply_deployment(&env("main"), push(2, "from-b")).unwrap();
    let mut a2 = copy(&mut a, 1);
    let mut b2 = copy(&mut b, 1);
    a.merge(&mut b2).unwrap();
    b.merge(&mut a2).unwrap();
    let on_a = a.deployment(&env("main")).unwrap();
    let on_b = b.deployment(&env("main")).unwrap();
    assert_eq!(on_a, on_b);
    // Equal seq: the greater node id wins, with its own artifacts.
    let (winner, commit) = if node(2) > node(1) {
        (node(2), "from-b")
    } else {
        (node(1), "from-a")
    };
    assert_eq!(on_a.commit, commit);
    assert_eq!(on_a.pushed_by, winner);
    assert_eq!(
        on_a.artifacts,
        vec![cid_of(format!("{commit}-wasm").as_bytes())]
    );
    assert_eq!(a.state_hash(), b.state_hash());
    // A later push on a node that saw both supersedes both.
    let later = a.apply_deployment(&env("main"), push(1, "later")).unwrap();
    assert_eq!(later.pushed_at_seq, 2);
    let mut a3 = copy(&mut a, 2);
    b.merge(&mut a3).unwrap();
    assert_eq!(b.deployment(&env("main")).unwrap().commit, "later");
}

// ----- sync over the memory net ---------------------------------------------

struct TestNode {
    id: NodeId,
    cluster: ClusterHandle,
    store: Arc<BlobStore>,
    replicate: ReplicateHandle,
    _dir: tempfile::TempDir,
}

fn start(hub: &MemoryHub, n: u8, replicate: ReplicateConfig) -> TestNode {
    let id = node(n);
    let (net, events) = hub.add_node(id);
    let cluster = ClusterHandle::new(SyncCore::new(
        member_state(n, n as u64),
        SyncConfig {
            anti_entropy_interval: Duration::from_secs(2),
            ..SyncConfig::default()
        },
    ));
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(BlobStore::open(dir.path().join("store")).unwrap());
    let (sync_rx, blob_rx) = split_events(events);
    tokio::spawn(run_sync(cluster.clone(), net.clone(), sync_rx));
    let (handle, commands) = replicate_channel();
    tokio::spawn(run_replicate(
        cluster.clone(),
        store.clone(),
        net,
        blob_rx,
        commands,
        replicate,
    ));
    TestNode {
        id,
        cluster,
        store,
        replicate: handle,
        _dir: dir,
    }
}

/// Wait until `cond` holds, checking every 50 ms (of tokio time) up to
/// `within`.
async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hashes(nodes: &[TestNode]) -> Vec<StateHash> {
    nodes.iter().map(|n| n.cluster.state_hash()).collect()
}

fn converged(nodes: &[TestNode]) -> bool {
    let h = hashes(nodes);
    h.iter().all(|x| *x == h[0])
}

fn deploy(node: &TestNode, branch: &str, commit: &str, manifest: Cid) {
    node.cluster
        .update(|s| {
            s.apply_deployment(
                &env(branch),
                DeploymentUpdate {
                    commit: commit.into(),
                    manifest_cid: manifest,
                    artifacts: vec![],
                    warrant: Some(push_warrant(node.id, &env(branch), Some(commit))),
                },
            )
        })
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn three_nodes_converge() {
    let hub = MemoryHub::new(Duration::from_secs(5));
    let nodes: Vec<TestNode> = (1..=3)
        .map(|n| start(&hub, n, ReplicateConfig::default()))
        .collect();
    deploy(&nodes[0], "main", "c1", cid_of(b"m1"));
    deploy(&nodes[2], "dev", "c2", cid_of(b"m2"));
    // Node 2 admits a fourth node (an invite an admin asked for).
    nodes[1].cluster.update(|s| admit_test_node(s, 4));
    wait_for("3 nodes to converge", Duration::from_secs(30), || {
        converged(&nodes)
            && nodes[0]
                .cluster
                .read(|s| s.deployments().len() == 2 && s.is_admitted(&node(4)))
    })
    .await;
    for n in &nodes {
        let d = n.cluster.read(|s| s.deployments());
        assert_eq!(d[&env("main")].commit, "c1");
        assert_eq!(d[&env("dev")].commit, "c2");
    }
}

#[tokio::test(start_paused = true)]
async fn partitioned_node_converges_after_heal() {
    let hub = MemoryHub::new(Duration::from_secs(3));
    let nodes: Vec<TestNode> = (1..=3)
        .map(|n| start(&hub, n, ReplicateConfig::default()))
        .collect();
    deploy(&nodes[0], "main", "c1", cid_of(b"m1"));
    wait_for("initial convergence", Duration::from_secs(30), || {
        converged(&nodes) && nodes[2].cluster.read(|s| s.deployments().len() == 1)
    })
    .await;

    // Node 3 is cut off silently: nobody gets PeerDown.
    hub.partition(&[node(3)]);
    deploy(&nodes[1], "main", "c2", cid_of(b"m2"));
    deploy(&nodes[2], "dev", "c3", cid_of(b"m3"));
    wait_for("nodes 1 and 2 to converge", Duration::from_secs(30), || {
        converged(&nodes[..2])
    })
    .await;
    // A while later node 3 still has the old state (nothing crosses the cut).
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_ne!(nodes[2].cluster.state_hash(), nodes[0].cluster.state_hash());
    assert_eq!(
        nodes[2]
            .cluster
            .read(|s| s.deployment(&env("main")).unwrap().commit),
        "c1"
    );

    hub.heal();
    wait_for(
        "node 3 to converge after heal",
        Duration::from_secs(30),
        || converged(&nodes),
    )
    .await;
    for n in &nodes {
        let d = n.cluster.read(|s| s.deployments());
        assert_eq!(d[&env("main")].commit, "c2");
        assert_eq!(d[&env("dev")].commit, "c3");
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_pushes_on_two_live_nodes_converge_to_one_winner() {
    let hub = MemoryHub::new(Duration::from_secs(5));
    let nodes: Vec<TestNode> = (1..=2)
        .map(|n| start(&hub, n, ReplicateConfig::default()))
        .collect();
    // Both push before either hears of the other.
    hub.partition(&[node(1)]);
    deploy(&nodes[0], "main", "from-1", cid_of(b"m1"));
    deploy(&nodes[1], "main", "from-2", cid_of(b"m2"));
    hub.heal();
    wait_for("convergence", Duration::from_secs(30), || converged(&nodes)).await;
    // Equal seq: the greater node id wins.
    let (commit, winner, manifest) = if node(2) > node(1) {
        ("from-2", node(2), cid_of(b"m2"))
    } else {
        ("from-1", node(1), cid_of(b"m1"))
    };
    for n in &nodes {
        let d = n.cluster.read(|s| s.deployment(&env("main")).unwrap());
        assert_eq!((d.commit.as_str(), d.pushed_by), (commit, winner));
        assert_eq!(d.manifest_cid, manifest);
    }
}

// ----- replication -------------------------------------------------------------

/// A deterministic pseudo-random byte stream of `len` bytes.
struct Noise {
    left: u64,
    x: u64,
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for b in &mut buf[..n] {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            *b = self.x as u8;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[tokio::test]
async fn blob_is_fetched_from_a_peer_and_verified() {
    let hub = MemoryHub::new(Duration::from_secs(30));
    let a = start(&hub, 1, ReplicateConfig::default());
    let b = start(&hub, 2, ReplicateConfig::default());
    let content = b"a function's wasm".repeat(1000);
    let cid = a.store.put(&content).unwrap();
    a.cluster.update(|s| s.add_holder(&cid, a.id)).unwrap();
    wait_for("b to learn the holder", Duration::from_secs(10), || {
        b.cluster.read(|s| s.holders(&cid).contains(&node(1)))
    })
    .await;
    let report = b.replicate.fetch(cid).await.unwrap();
    assert_eq!(report.from, Some(a.id));
    assert!(report.rejected.is_empty());
    assert_eq!(b.store.get(&cid).unwrap().as_ref(), content.as_slice());
    // b records itself as a holder, and everyone learns it.
    wait_for("a to learn b holds it", Duration::from_secs(10), || {
        a.cluster.read(|s| s.holders(&cid).contains(&node(2)))
    })
    .await;
    // Already local: no transfer.
    assert_eq!(b.replicate.fetch(cid).await.unwrap().from, None);
}

#[tokio::test]
async fn blob_is_found_by_asking_peers_when_state_names_no_holder() {
    let hub = MemoryHub::new(Duration::from_secs(30));
    let a = start(&hub, 1, ReplicateConfig::default());
    let b = start(&hub, 2, ReplicateConfig::default());
    let cid = a.store.put(b"unannounced").unwrap();
    let report = b.replicate.fetch(cid).await.unwrap();
    assert_eq!(report.from, Some(a.id));
    b.store.verify(&cid).unwrap();
}

#[tokio::test]
async fn corrupt_offer_is_rejected_and_fetched_from_another_holder() {
    let content = b"the real component bytes".repeat(500);
    let cid = cid_of(&content);
    // Make the corrupt holder the one tried first.
    let ranked = placement::rank(&cid, [node(1), node(2)]);
    let n_of = |id: NodeId| (1..=2).find(|n| node(*n) == id).unwrap();
    let (bad_n, good_n) = (n_of(ranked[0]), n_of(ranked[1]));
    let hub = MemoryHub::new(Duration::from_secs(30));
    let bad = start(&hub, bad_n, ReplicateConfig::default());
    let good = start(&hub, good_n, ReplicateConfig::default());
    let fetcher = start(&hub, 3, ReplicateConfig::default());

    good.store.put(&content).unwrap();
    // The bad node holds bytes of the same size that do not match the CID.
    let mut corrupt = content.clone();
    corrupt[100] ^= 0xff;
    let path = bad.store.blob_path(&cid);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &corrupt).unwrap();

    // Each holder announces itself (a node writes only its own records).
    for holder in [&bad, &good] {
        holder
            .cluster
            .update(|s| s.add_holder(&cid, holder.id))
            .unwrap();
    }
    wait_for("both holders to be known", Duration::from_secs(20), || {
        fetcher.cluster.read(|s| s.holders(&cid).len() == 2)
    })
    .await;
    let report = fetcher.replicate.fetch(cid).await.unwrap();
    assert_eq!(report.from, Some(good.id));
    assert_eq!(report.rejected, vec![bad.id]);
    assert_eq!(
        fetcher.store.get(&cid).unwrap().as_ref(),
        content.as_slice()
    );
}

#[tokio::test]
async fn fetch_gives_up_when_nobody_has_the_blob() {
    let hub = MemoryHub::new(Duration::from_secs(30));
    let _a = start(&hub, 1, ReplicateConfig::default());
    let b = start(
        &hub,
        2,
        ReplicateConfig {
            max_attempts: 2,
            retry_delay: Duration::from_millis(10),
            ..ReplicateConfig::default()
        },
    );
    let err = b.replicate.fetch(cid_of(b"nowhere")).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("after 2 attempts"), "{message}");
}

#[tokio::test]
async fn large_blob_moves_in_bounded_chunks() {
    const SIZE_BYTES: u64 = 64 * 1024 * 1024;
    let hub = MemoryHub::new(Duration::from_secs(60));
    let a = start(&hub, 1, ReplicateConfig::default());
    let b = start(&hub, 2, ReplicateConfig::default());
    let cid = a
        .store
        .put_reader(Noise {
            left: SIZE_BYTES,
            x: 0x9e3779b97f4a7c15,
        })
        .unwrap();
    let report = b.replicate.fetch(cid).await.unwrap();
    assert_eq!(report.from, Some(a.id));
    assert_eq!(b.store.size(&cid).unwrap(), SIZE_BYTES);
    b.store.verify(&cid).unwrap();
    let stats = hub.stats("blob/1");
    assert!(
        stats.max_response_bytes <= MAX_PAYLOAD_BYTES,
        "a response of {} bytes",
        stats.max_response_bytes
    );
    let chunks = SIZE_BYTES.div_ceil(MAX_PAYLOAD_BYTES as u64);
    assert!(
        stats.requests > chunks,
        "{} requests for {chunks} chunks",
        stats.requests
    );
    assert!(stats.response_bytes_total >= SIZE_BYTES);
}

#[tokio::test]
async fn referenced_blob_reaches_r_holders() {
    let hub = MemoryHub::new(Duration::from_secs(30));
    let nodes: Vec<TestNode> = (1..=4)
        .map(|n| start(&hub, n, ReplicateConfig::default()))
        .collect();
    // Every node is an admitted member: R = min(3, 4) = 3.
    for n in &nodes {
        n.cluster
            .update(|s| s.upsert_member(n.id, vec![], Role::Full, Some(node(1))))
            .unwrap();
    }
    wait_for("membership to spread", Duration::from_secs(10), || {
        nodes
            .iter()
            .all(|n| n.cluster.read(|s| s.admitted().len() == 4))
    })
    .await;
    let manifest = nodes[0].store.put(b"{\"manifest\":1}").unwrap();
    deploy(&nodes[0], "main", "c1", manifest);
    wait_for("3 holders", Duration::from_secs(20), || {
        nodes
            .iter()
            .all(|n| n.cluster.read(|s| s.holders(&manifest).len() >= 3))
    })
    .await;
    let holders: BTreeSet<NodeId> = nodes[0].cluster.read(|s| s.holders(&manifest));
    for n in &nodes {
        if holders.contains(&n.id) {
            n.store.verify(&manifest).unwrap();
        }
    }
    assert!(
        holders.contains(&node(1)),
        "the pushing node announces itself"
    );
}
