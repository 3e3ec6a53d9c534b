//! Builds in the sandbox, through a real `git push` to a real dream: a build
//! that reads `node.key`, reaches the node over 127.0.0.1, fork-bombs or
//! sleeps forever fails with a clear error in status, the previous release
//! keeps serving, and no process of it is left. And `canopy node` where no
//! sandbox can be set up refuses builds but still deploys prebuilt `wasm:`.
//!
//! Needs bubblewrap (and busybox, for a network client in the build): skips
//! with a printed reason where they are missing, and fails instead under
//! `CANOPY_REQUIRE_ALL=1` (CI).

use std::process::{Command, Stdio};
use std::time::Duration;

use canopy_tests::{Dream, Project, share_machine, testfn, wait_for};

/// Whether `program --version`-style `args` run here; if not, skip (or fail
/// under `CANOPY_REQUIRE_ALL=1`).
fn have(test: &str, program: &str, args: &[&str]) -> bool {
    let works = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return true;
    }
    let reason = format!(
        "{test} needs `{program}` working ({program} {})",
        args.join(" ")
    );
    canopy_tests::skip(&reason)
}

fn sandbox_works(test: &str) -> bool {
    have(
        test,
        "bwrap",
        &["--unshare-all", "--ro-bind", "/", "/", "true"],
    ) && have(test, "busybox", &["true"])
}

/// A canopy.yaml whose function `api` is built by `command`.
fn build_yaml(command: &str, timeout: &str) -> String {
    format!(
        "project: shop
functions:
  api:
    build: {{ dir: src, command: {command:?}, output: out.wasm, timeout: {timeout}, env: {{ FLAVOR: good }} }}
    http: {{ path: /api }}
"
    )
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(marker) {
                found.push(cmdline);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_builds_fail_cleanly_and_the_good_release_keeps_serving() {
    if !sandbox_works("hostile_builds_fail_cleanly") {
        return;
    }
    let _machine = share_machine().await;
    let dream = Dream::start().unwrap();
    let project = Project::new().unwrap();
    project
        .write(
            "canopy.yaml",
            // `build.env` reaches the build; the node's environment does not.
            build_yaml(
                "test \"$FLAVOR\" = good && test -z \"$CANOPY_TOKEN$RUST_LOG\" && cp prebuilt.wasm out.wasm",
                "30s",
            ),
        )
        .write("src/prebuilt.wasm", testfn("good"));
    let good = project.commit("good").unwrap();
    project.push(&dream.remote("shop"), "main").unwrap();
    dream.wait_live("shop", "main", &good).await;

    let key = dream.data_dir.join("node-1").join("node.key");
    assert!(key.exists(), "the node keeps its key at {}", key.display());
    let admin_port = dream.admin.rsplit(':').next().unwrap().to_owned();
    // (what it tries, its command, its timeout, what its error must say)
    let cases = [
        (
            "read node.key",
            format!("cat {} > out.wasm", key.display()),
            "30s",
            "No such file or directory",
        ),
        (
            "reach the node",
            format!("busybox wget -q -O out.wasm http://127.0.0.1:{admin_port}/api/health"),
            "30s",
            "can't connect",
        ),
        (
            "fork-bomb",
            "bomb() { bomb | bomb & }; bomb; sleep 33.3".to_owned(),
            "5s",
            "did not finish within 5s",
        ),
        (
            "sleep forever",
            "sleep 34.4; cp prebuilt.wasm out.wasm".to_owned(),
            "2s",
            "did not finish within 2s",
        ),
    ];
    for (what, command, timeout, expected) in cases {
        project.write("canopy.yaml", build_yaml(&command, timeout));
        let bad = project.commit(what).unwrap();
        project.push(&dream.remote("shop"), "main").unwrap();
        let error = dream.wait_failed("shop", "main", &bad).await;
        assert!(error.contains(expected), "{what}: {error}");
        assert!(
            error.contains("functions.api.build.command"),
            "{what}: {error}"
        );
        let env = dream.environment("shop", "main").await.unwrap();
        assert_eq!(
            env["live_commit"],
            good.as_str(),
            "{what}: the good release stays"
        );
        let response = canopy_tests::client()
            .get(format!("{}/api/hello", dream.http))
            .header("host", "shop.localhost")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{what}: still serving");
        assert!(response.text().await.unwrap().contains("good"), "{what}");
    }
    // Nothing the builds started outlives them.
    wait_for(
        "the builds' processes to be gone",
        Duration::from_secs(10),
        || async {
            let left: Vec<String> = ["33.3", "34.4"]
                .iter()
                .flat_map(|m| processes_with(m))
                .collect();
            left.is_empty().then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_without_a_sandbox_refuses_builds_but_deploys_prebuilt_wasm() {
    let _machine = share_machine().await;
    let dir = tempfile::tempdir().unwrap();
    // A PATH with no bwrap on it: no sandbox can be set up.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let node = canopy_tests::NodeProcess::start_in_with(dir.path(), "", |command| {
        command.env("PATH", &bin);
    })
    .await;
    let token = node.admin_token();
    let token = token.as_str();
    let admin = node.fact("admin");
    let remote = node.remote("shop");
    let environment = |admin: String, token: String| async move {
        let status = canopy_tests::status_json(&admin, &token).await?;
        status["deployments"].as_array()?.first().cloned()
    };

    let project = Project::new().unwrap();
    project
        .write(
            "canopy.yaml",
            build_yaml("echo built > ran.txt; cp prebuilt.wasm out.wasm", "30s"),
        )
        .write("src/prebuilt.wasm", testfn("v1"));
    let built = project.commit("built").unwrap();
    project.push(&remote, "main").unwrap();
    let error = wait_for(
        "the build to be refused",
        Duration::from_secs(60),
        || async {
            let env = environment(admin.clone(), token.to_owned()).await?;
            (env["failed_commit"] == built.as_str())
                .then(|| env["error"].as_str().unwrap().to_owned())
        },
    )
    .await;
    assert!(error.contains("must run in a sandbox"), "{error}");
    assert!(error.contains("bubblewrap"), "{error}");

    project.write(
        "canopy.yaml",
        "project: shop\nfunctions:\n  api:\n    wasm: src/prebuilt.wasm\n    http: { path: /api }\n",
    );
    let prebuilt = project.commit("prebuilt").unwrap();
    project.push(&remote, "main").unwrap();
    wait_for(
        "the prebuilt component to go live",
        Duration::from_secs(60),
        || async {
            let env = environment(admin.clone(), token.to_owned()).await?;
            (env["live_commit"] == prebuilt.as_str()).then_some(())
        },
    )
    .await;
    drop(node);
    assert!(!dir.path().join("data/work/ran.txt").exists());
}
