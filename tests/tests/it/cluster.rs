//! Many nodes, one cloud: `canopy dream --nodes N` runs N real `canopy node`
//! processes on 127.0.0.1 that form one encrypted cluster. Real `git push`,
//! real HTTP, real kills and restarts.
//!
//! Each test runs several node processes, so it has the machine to itself
//! ([`own_machine`]): two cores are not shared by sixteen nodes.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use canopy_tests::{Dream, NodeInfo, Project, canopy_bin, client, own_machine, testfn, wait_for};
use serde_json::Value;

const YAML: &str = "project: shop
functions:
  hello:
    wasm: functions/testfn.wasm
    http: { path: /api }
websites:
  www: { dir: public, path: / }
";

fn shop() -> Project {
    let project = Project::new().unwrap();
    project.write("canopy.yaml", YAML);
    project
}

/// Write version `version` of the shop into `project` and commit it.
fn commit_version(project: &Project, version: &str) -> String {
    project
        .write("functions/testfn.wasm", testfn(version))
        .write("public/index.html", format!("<h1>shop {version}</h1>\n"));
    project.commit(version).unwrap()
}

/// Wait until every node in `nodes` serves `version` from the function and
/// the website.
async fn wait_all_serve(nodes: &[NodeInfo], version: &str) {
    for node in nodes {
        node.wait_serving("shop.localhost", "/api/hello", version)
            .await;
        node.wait_serving("shop.localhost", "/", &format!("shop {version}"))
            .await;
    }
}

/// Every node's (state hash, serving commit of shop@main), once no node has
/// a push of shop@main still queued or deploying (a node that serves the
/// winner of the moment may yet make its own queued push the winner).
async fn node_views(nodes: &[NodeInfo]) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for node in nodes {
        let status = node.status().await?;
        let deploying = status["deployments"].as_array()?.iter().any(|d| {
            d["project"] == "shop" && d["branch"] == "main" && !d["pending_commit"].is_null()
        });
        if deploying {
            return None;
        }
        let local = &status["nodes"][0];
        out.push((
            local["state_hash"].as_str()?.to_owned(),
            local["serving"]["shop@main"].as_str()?.to_owned(),
        ));
    }
    Some(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_serve_a_push_and_a_restarted_node_catches_up() {
    let _machine = own_machine().await;
    let mut dream = Dream::start_nodes(3).unwrap();
    let nodes = dream.nodes();
    assert_eq!(
        nodes.len(),
        3,
        "dream.json lists every node: {}",
        dream.facts
    );
    let ids: BTreeSet<_> = nodes.iter().map(|n| n.id.clone()).collect();
    assert_eq!(ids.len(), 3, "every node has its own identity");

    // Push to node 1: all three serve it.
    let project = shop();
    let v1 = commit_version(&project, "v1");
    project.push(&nodes[0].remote("shop"), "main").unwrap();
    wait_all_serve(&nodes, "v1").await;

    // `canopy status` on any node shows the whole cluster, converged.
    let status = wait_for(
        "the cluster to report converged",
        Duration::from_secs(30),
        || async {
            let status = nodes[1].status().await?;
            (status["cluster"]["converged"] == true && status["cluster"]["reporting"] == 3)
                .then_some(status)
        },
    )
    .await;
    assert_eq!(status["cluster"]["members"], 3, "{status}");
    for node in status["nodes"].as_array().unwrap() {
        assert_eq!(node["serving"]["shop@main"], v1, "{status}");
        assert_eq!(node["peers"].as_array().unwrap().len(), 2, "{status}");
    }
    let table = Command::new(canopy_bin())
        .args([
            "status",
            "--admin",
            &nodes[2].admin,
            "--token",
            &dream.token,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("3 members, 3 reporting, converged"),
        "{table}"
    );
    assert!(
        table.contains(&format!("serves shop@main {}", &v1[..10])),
        "{table}"
    );

    // Kill node 2; push v2 to node 3; nodes 1 and 3 serve it.
    dream.kill_node(1);
    let v2 = commit_version(&project, "v2");
    project.push(&nodes[2].remote("shop"), "main").unwrap();
    wait_all_serve(&[nodes[0].clone(), nodes[2].clone()], "v2").await;

    // Node 2 comes back on its data directory and catches up to v2.
    let node2 = dream.restart_node(1).unwrap();
    wait_all_serve(std::slice::from_ref(&node2), "v2").await;
    let views = wait_for(
        "all three nodes on one state",
        Duration::from_secs(30),
        || async {
            let views = node_views(&[nodes[0].clone(), node2.clone(), nodes[2].clone()]).await?;
            views.windows(2).all(|w| w[0] == w[1]).then_some(views)
        },
    )
    .await;
    assert_eq!(views[0].1, v2, "the state's winner is the newest push");
}

#[tokio::test(flavor = "multi_thread")]
async fn five_nodes_converge_after_twenty_quick_pushes_to_random_nodes() {
    let _machine = own_machine().await;
    let dream = Dream::start_nodes(5).unwrap();
    let nodes = dream.nodes();
    let project = shop();
    let mut pushed = Vec::new();
    // A fixed pseudo-random order of target nodes (replayable).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 1..=20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let target = (x % nodes.len() as u64) as usize;
        let commit = commit_version(&project, &format!("v{i}"));
        project.push(&nodes[target].remote("shop"), "main").unwrap();
        pushed.push(commit);
    }
    // Every node ends on the same state and serves the same pushed commit.
    let views = wait_for(
        "five nodes to converge",
        Duration::from_secs(120),
        || async {
            let views = node_views(&nodes).await?;
            views.windows(2).all(|w| w[0] == w[1]).then_some(views)
        },
    )
    .await;
    let winner = &views[0].1;
    let index = pushed
        .iter()
        .position(|c| c == winner)
        .unwrap_or_else(|| panic!("serving {winner}, which was never pushed"));
    let version = format!("v{}", index + 1);
    wait_all_serve(&nodes, &version).await;
    // Requests agree on every node.
    for node in &nodes {
        let (status, body) = node.body("shop.localhost", "/api/hello").await.unwrap();
        assert_eq!(status, 200);
        assert!(body.contains(&version), "{} answered {body}", node.http);
    }
}

/// Start `canopy node` with a cluster section and return its exit status and
/// output (it is expected to fail to join).
fn start_node_expecting_failure(dir: &std::path::Path, cluster: Value) -> (bool, String) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "data_dir": dir.join("data"),
        "http": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "cluster": cluster,
    });
    let path = dir.join("node.yaml");
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let mut child = Command::new(canopy_bin())
        .args(["node", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A node that cannot join exits on its own; bound the wait.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node neither joined nor gave up within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

async fn invite(node: &NodeInfo) -> Value {
    client()
        .post(format!("{}/api/cluster/invite?ttl=600", node.admin))
        .bearer_auth(&node.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_without_the_secret_or_a_valid_invite_cannot_join() {
    let _machine = own_machine().await;
    let dream = Dream::start_nodes(2).unwrap();
    let founder = dream.node(0);
    let secret = dream.data_dir.join("cluster.secret");
    let scratch = tempfile::tempdir().unwrap();
    let wrong_secret = scratch.path().join("wrong.secret");
    std::fs::write(&wrong_secret, format!("{}\n", "ab".repeat(32))).unwrap();

    let cluster = |secret: &std::path::Path, answer: &Value| {
        serde_json::json!({
            "listen": ["127.0.0.1:0"],
            "secret_file": secret,
            "peers": answer["peers"],
            "invite": answer["token"],
            "mdns": false,
            "quic": false,
        })
    };

    // The wrong secret: the handshake fails, the node names the cause.
    let answer = invite(&founder).await;
    let (ok, out) = start_node_expecting_failure(
        &scratch.path().join("wrong-secret"),
        cluster(&wrong_secret, &answer),
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("cannot reach the node that issued the invite"),
        "{out}"
    );
    assert!(out.contains("secret"), "the help names the secret: {out}");

    // A forged token: one character of the signature changed.
    let mut forged = answer["token"].as_str().unwrap().to_owned();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let mut forged_answer = answer.clone();
    forged_answer["token"] = forged.into();
    let (ok, out) = start_node_expecting_failure(
        &scratch.path().join("forged"),
        cluster(&secret, &forged_answer),
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("forged") || out.contains("not a Canopy invite token"),
        "{out}"
    );

    // An expired token.
    let expired: Value = client()
        .post(format!("{}/api/cluster/invite?ttl=1", founder.admin))
        .bearer_auth(&founder.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    wait_for(
        "the one-second token to expire",
        Duration::from_secs(5),
        || async {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            (now > expired["expires_at_unix_s"].as_u64().unwrap()).then_some(())
        },
    )
    .await;
    let (ok, out) =
        start_node_expecting_failure(&scratch.path().join("expired"), cluster(&secret, &expired));
    assert!(!ok, "{out}");
    assert!(out.contains("expired"), "{out}");

    // A token someone already used: the inviter refuses a second node. The
    // node holds the secret, so it connects, but it is never admitted and
    // gets nothing but the refusal.
    let used: Value = invite(&founder).await;
    let first = scratch.path().join("first");
    std::fs::create_dir_all(&first).unwrap();
    let config = serde_json::json!({
        "data_dir": first.join("data"),
        "http": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "cluster": cluster(&secret, &used),
    });
    std::fs::write(
        first.join("node.yaml"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    let mut joined = Command::new(canopy_bin())
        .args(["node", "--config"])
        .arg(first.join("node.yaml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the first user of the token to be admitted",
        Duration::from_secs(60),
        || async {
            let status = founder.status().await?;
            (status["cluster"]["members"] == 3).then_some(())
        },
    )
    .await;
    let (ok, out) =
        start_node_expecting_failure(&scratch.path().join("reuse"), cluster(&secret, &used));
    let _ = joined.kill();
    let _ = joined.wait();
    assert!(!ok, "{out}");
    assert!(out.contains("already used"), "{out}");
    let status = founder.status().await.unwrap();
    assert_eq!(
        status["cluster"]["members"], 3,
        "the refused node was not admitted: {status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_branch_goes_down_on_every_node() {
    let _machine = own_machine().await;
    let dream = Dream::start_nodes(3).unwrap();
    let nodes = dream.nodes();
    let project = shop();
    commit_version(&project, "v1");
    project.push(&nodes[0].remote("shop"), "main").unwrap();
    project.push(&nodes[0].remote("shop"), "preview").unwrap();
    for node in &nodes {
        node.wait_serving("preview.shop.localhost", "/api/hello", "v1")
            .await;
    }
    project
        .git(&["push", &nodes[0].remote("shop"), ":refs/heads/preview"])
        .unwrap();
    for node in &nodes {
        wait_for(
            &format!("{} to stop serving the deleted preview", node.http),
            Duration::from_secs(60),
            || async {
                let (status, _) = node.body("preview.shop.localhost", "/api/hello").await?;
                (status == 404).then_some(())
            },
        )
        .await;
        let (status, body) = node.body("shop.localhost", "/api/hello").await.unwrap();
        assert_eq!(
            (status, body.contains("v1")),
            (200, true),
            "main keeps serving"
        );
    }
}

/// Every file below `dir`.
fn files_below(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_blob_from_a_peer_is_rejected_and_fetched_elsewhere() {
    let _machine = own_machine().await;
    let mut dream = Dream::start_nodes(3).unwrap();
    let nodes = dream.nodes();
    dream.kill_node(2);

    // Nodes 1 and 2 hold v1.
    let project = shop();
    commit_version(&project, "v1");
    project.push(&nodes[0].remote("shop"), "main").unwrap();
    wait_all_serve(&nodes[..2], "v1").await;

    // Node 1's copy of the component rots on disk (same size, other bytes).
    let component = testfn("v1");
    let stored = files_below(&nodes[0].data_dir.join("store"))
        .into_iter()
        .find(|p| std::fs::read(p).is_ok_and(|b| b == component))
        .expect("node 1 stores the component");
    let mut rotten = component.clone();
    for b in rotten.iter_mut().skip(64).step_by(97) {
        *b ^= 0x5a;
    }
    std::fs::write(&stored, &rotten).unwrap();

    // With node 2 down, node 3's only source is node 1's rotten copy: it is
    // rejected, and node 3 serves nothing of v1.
    dream.kill_node(1);
    let node3 = dream.restart_node(2).unwrap();
    let log = std::path::Path::new(&node3.data_dir).join("node.log");
    wait_for(
        "node 3 to reject node 1's corrupt copy",
        Duration::from_secs(60),
        || async {
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines()
                .any(|l| l.contains("offered a corrupt blob") && l.contains(&nodes[0].id))
                .then_some(())
        },
    )
    .await;
    let (status, body) = node3.body("shop.localhost", "/api/hello").await.unwrap();
    assert_ne!(
        status, 200,
        "node 3 must not serve an unverified release: {body}"
    );

    // Node 2 comes back: node 3 fetches the good copy from it and serves v1.
    dream.restart_node(1).unwrap();
    node3
        .wait_serving("shop.localhost", "/api/hello", "v1")
        .await;
    let held = files_below(&node3.data_dir.join("store"))
        .into_iter()
        .filter(|p| std::fs::read(p).is_ok_and(|b| b == rotten))
        .count();
    assert_eq!(held, 0, "the corrupt bytes never reached node 3's store");
}

/// Bytes of the cluster state a node saved (the document and the change
/// files after it).
fn saved_state_bytes(data_dir: &std::path::Path) -> u64 {
    let document =
        std::fs::metadata(data_dir.join("cluster/state.automerge")).map_or(0, |m| m.len());
    let changes: u64 = std::fs::read_dir(data_dir.join("cluster/state.changes"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    document + changes
}

/// Issue 13: automerge sends everything a peer lacks in one sync message,
/// and a 1,000-file site's pushes make that more than a payload's 4 MiB.
/// A node away while the cluster took ~100 such pushes comes back, gets the
/// history in parts, and converges. (`CANOPY_SYNC_MIN_PUSHES` raises the
/// push count, say to the 500.)
#[tokio::test(flavor = "multi_thread")]
async fn a_node_away_for_a_state_larger_than_a_payload_catches_up() {
    const FILES: usize = 1000;
    const CHANGED_PER_PUSH: usize = 10;
    const PAYLOAD_BYTES: u64 = 4 << 20;
    let min_pushes: usize = std::env::var("CANOPY_SYNC_MIN_PUSHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let _machine = own_machine().await;
    let mut dream = Dream::start_nodes(3).unwrap();
    let nodes = dream.nodes();
    let project = Project::new().unwrap();
    project.write(
        "canopy.yaml",
        "project: shop\nwebsites:\n  www: { dir: public, path: / }\n",
    );
    for i in 0..FILES {
        project.write(&format!("public/f{i}.txt"), format!("file {i} version 0\n"));
    }
    project.write("public/index.html", "push 0\n");
    project.commit("push 0").unwrap();
    project.push(&nodes[0].remote("shop"), "main").unwrap();
    for node in &nodes {
        node.wait_serving("shop.localhost", "/", "push 0").await;
    }

    dream.kill_node(2);
    let started = std::time::Instant::now();
    let mut pushes = 0;
    // Until the history node 3 lacks is well over one payload.
    while saved_state_bytes(&nodes[0].data_dir) < PAYLOAD_BYTES + PAYLOAD_BYTES / 2
        || pushes < min_pushes
    {
        pushes += 1;
        assert!(
            pushes <= 600,
            "600 pushes and the state is still under 6 MiB"
        );
        let first = (pushes * CHANGED_PER_PUSH) % FILES;
        for i in first..first + CHANGED_PER_PUSH {
            project.write(
                &format!("public/f{i}.txt"),
                format!("file {i} version {pushes}\n"),
            );
        }
        project.write("public/index.html", format!("push {pushes}\n"));
        project.commit(&format!("push {pushes}")).unwrap();
        // Alternate between the two live nodes.
        let node = &nodes[pushes % 2];
        project.push(&node.remote("shop"), "main").unwrap();
        node.wait_serving("shop.localhost", "/", &format!("push {pushes}\n"))
            .await;
    }
    let state_bytes = saved_state_bytes(&nodes[0].data_dir);
    eprintln!(
        "{pushes} pushes of a {FILES}-file site in {:.0?}: saved cluster state {:.1} MiB",
        started.elapsed(),
        state_bytes as f64 / (1 << 20) as f64
    );

    let node3 = dream.restart_node(2).unwrap();
    node3
        .wait_serving("shop.localhost", "/", &format!("push {pushes}\n"))
        .await;
    let all = [nodes[0].clone(), nodes[1].clone(), node3.clone()];
    wait_for(
        "all three nodes on one state",
        Duration::from_secs(120),
        || async {
            let mut hashes = BTreeSet::new();
            for node in &all {
                hashes.insert(
                    node.status().await?["nodes"][0]["state_hash"]
                        .as_str()?
                        .to_owned(),
                );
            }
            (hashes.len() == 1).then_some(())
        },
    )
    .await;
    let logs: String = nodes
        .iter()
        .take(2)
        .map(|n| std::fs::read_to_string(n.data_dir.join("node.log")).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("sending a large message in parts"),
        "the catch-up went in parts (a message over 4 MiB)"
    );
}
