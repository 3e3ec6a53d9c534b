//! Bounds, end to end (issue 13): `canopy node` with `limits:` in its
//! config refuses a push over one with the limit's name and value in
//! `git push`'s output, stores nothing of it, and keeps serving the last
//! good release; its admin port holds a bounded number of connections and
//! closes clients that do not send their headers in time.

use std::time::Duration;

use canopy_tests::{NodeProcess, Project, share_machine, testfn, wait_for};

/// A `canopy node` on loopback whose config ends with `limits` (YAML lines
/// under `limits:`), and the directory it keeps its data in.
async fn node_with_limits(limits: &str) -> (tempfile::TempDir, NodeProcess) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("node.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {}\nhttp: 127.0.0.1:0\nadmin: 127.0.0.1:0\nlimits:\n{limits}",
            data.display()
        ),
    )
    .unwrap();
    let node = NodeProcess::start(&config, &data).await;
    (dir, node)
}

#[tokio::test]
async fn a_checkout_bomb_is_refused_naming_the_limit_and_the_live_release_stays() {
    let _machine = share_machine().await;
    let (dir, node) =
        node_with_limits("  git:\n    max_files: 20\n    max_checkout_bytes: 4MiB\n").await;
    let data = dir.path().join("data");
    let token = node.admin_token();
    let admin = node.fact("admin");
    let http = node.fact("http");
    let remote = canopy_tests::with_token(&node.fact("git_base"), &token) + "shop.git";
    let live_commit = || async {
        let status = canopy_tests::status_json(&admin, &token).await?;
        status["deployments"]
            .as_array()?
            .iter()
            .find(|d| d["project"] == "shop")
            .and_then(|d| d["live_commit"].as_str().map(str::to_owned))
    };
    let answer = || async {
        canopy_tests::client()
            .get(format!("{http}/api/hello"))
            .header("host", "shop.localhost")
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
    };

    let project = Project::new().unwrap();
    project
        .write(
            "canopy.yaml",
            "project: shop\nfunctions:\n  api:\n    wasm: functions/testfn.wasm\n    http: { path: /api }\n",
        )
        .write("functions/testfn.wasm", testfn("good"));
    let good = project.commit("good").unwrap();
    project.push(&remote, "main").unwrap();
    wait_for(
        "the good release to go live",
        Duration::from_secs(60),
        || async { (live_commit().await? == good).then_some(()) },
    )
    .await;

    // Many small files: over max_files.
    for i in 0..40 {
        project.write(&format!("site/page-{i}.html"), format!("page {i}"));
    }
    project.commit("many files").unwrap();
    let refused = project.push(&remote, "main").unwrap_err().to_string();
    assert!(refused.contains("limits.git.max_files = 20"), "{refused}");

    // One huge file (it compresses to almost nothing): over max_checkout_bytes.
    project.git(&["reset", "--quiet", "--hard", &good]).unwrap();
    project.write("huge.txt", vec![b'x'; 16 << 20]);
    project.commit("huge file").unwrap();
    let refused = project.push(&remote, "main").unwrap_err().to_string();
    assert!(
        refused.contains("limits.git.max_checkout_bytes = 4MiB"),
        "{refused}"
    );

    // Nothing of either push was stored, and the good release serves on.
    assert_eq!(live_commit().await.as_deref(), Some(good.as_str()));
    let body = answer().await.unwrap_or_default();
    assert!(body.contains("good"), "{body}");
    let packs: Vec<_> = std::fs::read_dir(data.join("git/shop.git/objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".pack"))
        .collect();
    assert_eq!(packs.len(), 1, "only the good push's pack: {packs:?}");
}

/// Whether the server closed `stream` (EOF or reset) within `deadline`.
async fn closed_within(stream: &mut tokio::net::TcpStream, deadline: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // An answer (a 408, say) before the close: keep reading.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn the_admin_port_bounds_its_connections_and_how_long_headers_may_take() {
    use tokio::io::AsyncWriteExt;
    let _machine = share_machine().await;
    let (_dir, node) =
        node_with_limits("  admin:\n    max_connections: 4\n    header_read_timeout: 3s\n").await;
    let admin = node.fact("admin");
    let addr = admin.trim_start_matches("http://").to_owned();

    // Four clients hold every slot without sending a byte (one sends half
    // its headers); a fifth is closed at once instead of queueing behind.
    let mut idle = Vec::new();
    for i in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        if i == 0 {
            stream
                .write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .await
                .unwrap();
        }
        idle.push(stream);
    }
    let mut fifth = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(
        closed_within(&mut fifth, Duration::from_secs(2)).await,
        "a connection over limits.admin.max_connections was kept open"
    );
    // The header-read timeout frees the slots: every idle client is closed.
    for (i, stream) in idle.iter_mut().enumerate() {
        assert!(
            closed_within(stream, Duration::from_secs(15)).await,
            "idle connection {i} outlived limits.admin.header_read_timeout"
        );
    }
    // And the admin API answers again.
    let health = wait_for(
        "the admin API to answer",
        Duration::from_secs(10),
        || async {
            let response = canopy_tests::client()
                .get(format!("{admin}/api/health"))
                .send()
                .await
                .ok()?;
            response.status().is_success().then_some(())
        },
    )
    .await;
    let () = health;
}
