//! `canopy dream` end to end: real process, real `git push`, real HTTP.
//!
//! Dreams run side by side, but not beside a test that has the machine to
//! itself ([`share_machine`]).

use std::time::Duration;

use canopy_tests::{Dream, Project, share_machine, testfn, wait_for};

const HELLO_YAML: &str = "project: shop
functions:
  hello:
    wasm: functions/testfn.wasm
    http: { path: /api }
    limits: { timeout: 2s, memory: 32MiB }
websites:
  www: { dir: public, path: / }
";

fn shop(version: &str) -> Project {
    let project = Project::new().unwrap();
    project
        .write("canopy.yaml", HELLO_YAML)
        .write("functions/testfn.wasm", testfn(version))
        .write("public/index.html", format!("<h1>shop {version}</h1>\n"))
        .write("public/css/site.css", "h1 { color: green }\n");
    project
}

async fn body(dream: &Dream, host: &str, path: &str) -> (u16, String) {
    let response = dream.get(host, path).await;
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn push_serves_function_and_website() {
    let _machine = share_machine().await;
    let dream = Dream::start().unwrap();
    let project = shop("v1");
    let commit = project.commit("v1").unwrap();
    let output = project.push(&dream.remote("shop"), "main").unwrap();
    assert!(
        output.contains("canopy:"),
        "the push reports progress: {output}"
    );
    dream.wait_live("shop", "main", &commit).await;

    let (status, text) = body(&dream, "shop.localhost", "/api/hello").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("v1"), "{text}");

    let index = dream.get("shop.localhost", "/").await;
    assert_eq!(index.status(), 200);
    assert_eq!(index.headers()["content-type"], "text/html; charset=utf-8");
    let etag = index.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(index.text().await.unwrap(), "<h1>shop v1</h1>\n");

    let css = dream.get("shop.localhost", "/css/site.css").await;
    assert_eq!(css.status(), 200);
    assert!(
        css.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );

    let revalidated = canopy_tests::client()
        .get(format!("{}/", dream.http))
        .header("host", "shop.localhost")
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), 304);

    let (status, _) = body(&dream, "nope.localhost", "/").await;
    assert_eq!(status, 404, "unknown host");
    let (status, _) = body(&dream, "shop.localhost", "/missing.html").await;
    assert_eq!(status, 404, "unknown path");

    // The function sees the Host header and the full path.
    let (_, text) = body(&dream, "shop.localhost", "/api/headers").await;
    assert!(
        text.contains("shop.localhost") && text.contains("/api/headers"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn branch_preview_serves_beside_main() {
    let _machine = share_machine().await;
    let dream = Dream::start().unwrap();
    let project = shop("main-v1");
    let main_commit = project.commit("main").unwrap();
    project.push(&dream.remote("shop"), "main").unwrap();
    dream.wait_live("shop", "main", &main_commit).await;

    project.checkout("feature/new-look").unwrap();
    project.write("functions/testfn.wasm", testfn("preview-v2"));
    let preview_commit = project.commit("preview").unwrap();
    project
        .push(&dream.remote("shop"), "feature/new-look")
        .unwrap();
    dream
        .wait_live("shop", "feature/new-look", &preview_commit)
        .await;

    let (_, main_text) = body(&dream, "shop.localhost", "/api/hello").await;
    assert!(main_text.contains("main-v1"), "{main_text}");
    let env = dream.environment("shop", "feature/new-look").await.unwrap();
    let host = env["hosts"][0].as_str().unwrap().to_owned();
    assert!(
        host.ends_with(".shop.localhost") && host.starts_with("feature-new-look"),
        "{host}"
    );
    let (_, preview_text) = body(&dream, &host, "/api/hello").await;
    assert!(preview_text.contains("preview-v2"), "{preview_text}");

    // Deleting the branch takes the preview down and leaves main alone.
    project
        .git(&[
            "push",
            &dream.remote("shop"),
            "--delete",
            "feature/new-look",
        ])
        .unwrap();
    wait_for("preview removed", Duration::from_secs(30), || async {
        dream
            .environment("shop", "feature/new-look")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let (status, _) = body(&dream, &host, "/api/hello").await;
    assert_eq!(status, 404);
    let (status, _) = body(&dream, "shop.localhost", "/api/hello").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_pushes_never_replace_the_live_version() {
    let _machine = share_machine().await;
    let dream = Dream::start().unwrap();
    let project = shop("good");
    let good = project.commit("good").unwrap();
    project.push(&dream.remote("shop"), "main").unwrap();
    dream.wait_live("shop", "main", &good).await;

    type Breaker = fn(&Project);
    let cases: [(&str, Breaker, &str); 6] = [
        (
            "unknown key",
            |p| {
                p.write("canopy.yaml", HELLO_YAML.replace("wasm:", "wsam:"));
            },
            "canopy.yaml:4:",
        ),
        (
            "bad yaml",
            |p| {
                p.write("canopy.yaml", "project: shop\nfunctions: [\n");
            },
            "canopy.yaml:",
        ),
        (
            "missing wasm",
            |p| {
                p.remove("functions/testfn.wasm");
            },
            "functions/testfn.wasm",
        ),
        (
            "core module, not a component",
            |p| {
                // The smallest valid core module: magic + version 1.
                p.write("functions/testfn.wasm", b"\0asm\x01\0\0\0");
            },
            "component",
        ),
        (
            "garbage wasm",
            |p| {
                p.write("functions/testfn.wasm", b"this is not wasm");
            },
            "WebAssembly",
        ),
        (
            "failing build",
            |p| {
                p.write(
                "canopy.yaml",
                HELLO_YAML.replace(
                    "wasm: functions/testfn.wasm",
                    "build: { dir: functions, command: \"echo compiling; echo 'error: it broke' >&2; exit 3\", output: out.wasm }",
                ),
            );
            },
            "it broke",
        ),
    ];
    for (name, break_it, expected) in cases {
        // Start each case from the good tree.
        project
            .git(&["checkout", "--quiet", &good, "--", "."])
            .unwrap();
        break_it(&project);
        let bad = project.commit(name).unwrap();
        project.push(&dream.remote("shop"), "main").unwrap();
        let error = dream.wait_failed("shop", "main", &bad).await;
        assert!(
            error.contains(expected),
            "{name}: error {error:?} should contain {expected:?}"
        );
        let env = dream.environment("shop", "main").await.unwrap();
        assert_eq!(
            env["live_commit"],
            good.as_str(),
            "{name}: live commit unchanged"
        );
        assert_eq!(env["state"], "degraded", "{name}");
        let (status, text) = body(&dream, "shop.localhost", "/api/hello").await;
        assert_eq!(status, 200, "{name}: still serving");
        assert!(
            text.contains("good"),
            "{name}: still the good version: {text}"
        );
    }

    // The status CLI shows the error for a person.
    let output = std::process::Command::new(canopy_tests::canopy_bin())
        .args(["status", "--admin", &dream.admin, "--token", &dream.token])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("shop@main") && text.contains("degraded") && text.contains("it broke"),
        "{text}"
    );

    // A good push after the failures goes live and clears the error.
    project
        .git(&["checkout", "--quiet", &good, "--", "."])
        .unwrap();
    project.write("functions/testfn.wasm", testfn("fixed"));
    let fixed = project.commit("fixed").unwrap();
    project.push(&dream.remote("shop"), "main").unwrap();
    dream.wait_live("shop", "main", &fixed).await;
    let env = dream.environment("shop", "main").await.unwrap();
    assert_eq!(env["state"], "live");
    assert!(env["error"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn build_command_produces_the_component() {
    let _machine = share_machine().await;
    let dream = Dream::start().unwrap();
    let project = Project::new().unwrap();
    project
        .write(
            "canopy.yaml",
            "project: builder
functions:
  api:
    build: { dir: src, command: \"mkdir -p out && cp prebuilt.wasm out/api.wasm\", output: out/api.wasm, timeout: 30s }
    http: { path: / }
",
        )
        .write("src/prebuilt.wasm", testfn("built"));
    let commit = project.commit("build").unwrap();
    project.push(&dream.remote("builder"), "main").unwrap();
    dream.wait_live("builder", "main", &commit).await;
    let (status, text) = body(&dream, "builder.localhost", "/hello").await;
    assert_eq!(status, 200);
    assert!(text.contains("built"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn runaway_functions_are_contained() {
    let _machine = share_machine().await;
    let dream = Dream::start().unwrap();
    let project = shop("limits");
    let commit = project.commit("limits").unwrap();
    project.push(&dream.remote("shop"), "main").unwrap();
    dream.wait_live("shop", "main", &commit).await;

    let looping = tokio::spawn({
        let http = dream.http.clone();
        async move {
            canopy_tests::client()
                .get(format!("{http}/api/loop"))
                .header("host", "shop.localhost")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    // While one request loops, others are served.
    for _ in 0..5 {
        let (status, _) = body(&dream, "shop.localhost", "/api/hello").await;
        assert_eq!(status, 200);
    }
    let status = tokio::time::timeout(Duration::from_secs(20), looping)
        .await
        .expect("the loop is cut off by its 2s timeout")
        .unwrap();
    assert_eq!(status, 504, "a timed-out function answers 504");

    let (status, text) = body(&dream, "shop.localhost", "/api/oom").await;
    assert_eq!(status, 500, "{text}");
    let (status, _) = body(&dream, "shop.localhost", "/api/hello").await;
    assert_eq!(status, 200, "the node keeps serving after a memory bomb");
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_serves_again_without_a_push() {
    let _machine = share_machine().await;
    let data = tempfile::tempdir().unwrap();
    let mut dream = Dream::start_in(data.path()).unwrap();
    let project = shop("persist");
    let commit = project.commit("persist").unwrap();
    project.push(&dream.remote("shop"), "main").unwrap();
    dream.wait_live("shop", "main", &commit).await;
    let status = dream.stop().unwrap();
    assert!(status.success(), "clean stop on SIGTERM: {status}");

    let dream = Dream::start_in(data.path()).unwrap();
    // Ready means serving: no waiting, no push.
    let (status, text) = body(&dream, "shop.localhost", "/api/hello").await;
    assert_eq!(status, 200, "{text}\n{}", dream.log());
    assert!(text.contains("persist"));
    let report = dream.status().await;
    let runtime = &report["nodes"][0]["runtime"];
    assert_eq!(
        runtime["compiled"], 0,
        "restored from the compiled cache: {runtime}"
    );
    assert_eq!(runtime["from_disk"], 1, "{runtime}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hundred_concurrent_requests_all_succeed() {
    let _machine = share_machine().await;
    let dream = Dream::start().unwrap();
    let project = shop("load");
    let commit = project.commit("load").unwrap();
    project.push(&dream.remote("shop"), "main").unwrap();
    dream.wait_live("shop", "main", &commit).await;

    let client = canopy_tests::client();
    let requests = (0..100).map(|i| {
        let client = client.clone();
        let url = if i % 2 == 0 {
            format!("{}/api/hello", dream.http)
        } else {
            format!("{}/", dream.http)
        };
        async move {
            let response = client
                .get(url)
                .header("host", "shop.localhost")
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    });
    let results = futures::future::join_all(requests).await;
    for (status, text) in &results {
        assert_eq!(*status, 200, "{text}");
        assert!(text.contains("load"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_stream_both_ways() {
    let _machine = share_machine().await;
    let dream = Dream::start().unwrap();
    let project = shop("stream");
    let commit = project.commit("stream").unwrap();
    project.push(&dream.remote("shop"), "main").unwrap();
    dream.wait_live("shop", "main", &commit).await;

    let payload: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let echoed = canopy_tests::client()
        .post(format!("{}/api/echo", dream.http))
        .header("host", "shop.localhost")
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.status(), 200);
    let bytes = echoed.bytes().await.unwrap();
    assert!(
        bytes.len() == payload.len() && bytes[..] == payload[..],
        "echo returns the body intact"
    );

    let streamed = dream.get("shop.localhost", "/api/stream?n=64").await;
    assert_eq!(streamed.status(), 200);
    assert_eq!(streamed.bytes().await.unwrap().len(), 64 * 64 * 1024);
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_blobs_are_detected_never_served() {
    let _machine = share_machine().await;
    let data = tempfile::tempdir().unwrap();
    let mut dream = Dream::start_in(data.path()).unwrap();
    let project = shop("corrupt");
    let commit = project.commit("corrupt").unwrap();
    project.push(&dream.remote("shop"), "main").unwrap();
    dream.wait_live("shop", "main", &commit).await;

    // Flip a byte in the stored copy of index.html.
    let index = b"<h1>shop corrupt</h1>\n";
    let blob = find_blob(data.path(), index).expect("index.html is in the store");
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[5] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let response = dream.get("shop.localhost", "/").await;
    assert_eq!(response.status(), 500);
    let text = response.text().await.unwrap();
    assert!(
        !text.contains("shop"),
        "corrupt bytes are never served: {text}"
    );

    // A corrupted component is not executed after a restart.
    let wasm = testfn("corrupt");
    let blob = find_blob(data.path(), &wasm).expect("the component is in the store");
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    // Drop the compiled cache too, so the corrupt blob is all there is.
    dream.stop().unwrap();
    std::fs::remove_dir_all(data.path().join("node-1/compiled")).unwrap();
    let dream = Dream::start_in(data.path()).unwrap();
    let env = dream.environment("shop", "main").await.unwrap();
    let error = env["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("verification") || error.contains("corrupt"),
        "{env}"
    );
    let (status, _) = body(&dream, "shop.localhost", "/api/hello").await;
    assert_ne!(status, 200, "a corrupt component is never run");

    // Pushing again heals the store.
    project.write("public/fixed.txt", "fixed");
    let healed = project.commit("heal").unwrap();
    project.push(&dream.remote("shop"), "main").unwrap();
    dream.wait_live("shop", "main", &healed).await;
    let (status, text) = body(&dream, "shop.localhost", "/api/hello").await;
    assert_eq!(status, 200, "{text}");
}

/// The stored blob file whose content is `content`.
fn find_blob(data: &std::path::Path, content: &[u8]) -> Option<std::path::PathBuf> {
    let mut stack = vec![data.join("node-1/store/blobs")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ok()? {
            let path = entry.ok()?.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path).ok()?.as_slice() == content {
                return Some(path);
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn https_with_the_local_ca() {
    let _machine = share_machine().await;
    let dream = Dream::start().unwrap();
    let project = shop("tls");
    let commit = project.commit("tls").unwrap();
    project.push(&dream.remote("shop"), "main").unwrap();
    dream.wait_live("shop", "main", &commit).await;

    let https = dream.facts["https"]
        .as_str()
        .expect("dream.json names the HTTPS address");
    let port = https.rsplit(':').next().unwrap();
    let ca_path = dream.facts["ca"].as_str().expect("dream.json names the CA");
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca_path).unwrap()).unwrap();
    let addr: std::net::SocketAddr = https.trim_start_matches("https://").parse().unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .resolve("shop.localhost", addr)
        .build()
        .unwrap();
    let response = client
        .get(format!("https://shop.localhost:{port}/api/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.version(),
        reqwest::Version::HTTP_2,
        "ALPN picks HTTP/2"
    );
    assert!(response.text().await.unwrap().contains("tls"));

    // A client that does not trust the dream's CA is refused.
    let untrusting = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .resolve("shop.localhost", addr)
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!("https://shop.localhost:{port}/"))
            .send()
            .await
            .is_err()
    );
}
