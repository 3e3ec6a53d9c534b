//! Bounds, end to end (issue 13): `canopy node` with `limits:` in its
//! config refuses a push over one with the limit's name and value in
//! `git push`'s output, stores nothing of it, and keeps serving the last
//! good release.

use std::time::Duration;

use canopy_tests::{NodeProcess, Project, share_machine, testfn, wait_for};

#[tokio::test]
async fn a_checkout_bomb_is_refused_naming_the_limit_and_the_live_release_stays() {
    let _machine = share_machine().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("node.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {}\nhttp: 127.0.0.1:0\nadmin: 127.0.0.1:0\nlimits:\n  git:\n    max_files: 20\n    max_checkout_bytes: 4MiB\n",
            data.display()
        ),
    )
    .unwrap();
    let node = NodeProcess::start(&config, &data).await;
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
