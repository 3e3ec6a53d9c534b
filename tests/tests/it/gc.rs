//! Garbage collection, end to end (issue 13): `canopy node` with `gc:` in
//! its config, a site of 1,000 files pushed again and again with `git push`,
//! part of it changed each time. The store stays near what the live release
//! and its history use, the compiled code of old function versions goes,
//! `canopy status` shows what each project uses and what the last pass
//! freed, and deleting a branch frees what only it used.

use std::path::Path;
use std::time::Duration;

use canopy_tests::{NodeProcess, Project, share_machine, testfn, wait_for};

/// Files in the site.
const FILES: usize = 1_000;
/// Bytes per file.
const FILE_BYTES: usize = 1_024;
/// Files changed by each push.
const CHANGED_PER_PUSH: usize = 20;
/// Replaced releases kept per environment (`gc.history`).
const HISTORY: usize = 3;
/// A new function version every this many pushes.
const PUSHES_PER_FUNCTION: usize = 25;

/// Pushes made: 200, or `CANOPY_GC_PUSHES`.
fn pushes() -> usize {
    std::env::var("CANOPY_GC_PUSHES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200)
}

/// File `i`'s content in push `n`: file `i` last changed at the latest push
/// `m <= n` that changed it (push `m` changes files `m*20 .. m*20+20`, mod
/// 1,000).
fn file_content(i: usize, n: usize) -> Vec<u8> {
    let changed_at = (0..=n)
        .rev()
        .find(|m| {
            let first = (m * CHANGED_PER_PUSH) % FILES;
            (first..first + CHANGED_PER_PUSH).contains(&i) && *m > 0
        })
        .unwrap_or(0);
    let mut bytes = format!("file {i} version {changed_at}\n").into_bytes();
    bytes.resize(FILE_BYTES, b'.');
    bytes
}

/// Total size of the files under `dir` (recursively), 0 if it is absent.
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

fn files_under(dir: &Path, suffix: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
            .count()
    })
}

#[tokio::test]
async fn a_site_pushed_many_times_keeps_its_store_near_the_live_set_and_history() {
    let _machine = share_machine().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = NodeProcess::start_in(
        dir.path(),
        &format!("gc:\n  interval: 1s\n  grace: 1s\n  history: {HISTORY}\n"),
    )
    .await;
    let token = node.admin_token();
    let admin = node.fact("admin");
    let http = node.fact("http");
    let remote = node.remote("shop");
    let status = || canopy_tests::status_json(&admin, &token);
    let live_commit = |branch: &'static str| node.live_commit("shop", branch);

    let project = Project::new().unwrap();
    project.write(
        "canopy.yaml",
        "project: shop\nfunctions:\n  hello:\n    wasm: hello.wasm\n    http: { path: /api/hello }\nwebsites:\n  www: { dir: public, path: / }\n",
    );
    let pushes = pushes();
    let started = std::time::Instant::now();
    let mut store_after_first = 0;
    for n in 0..pushes {
        if n == 0 {
            for i in 0..FILES {
                project.write(&format!("public/f{i}.txt"), file_content(i, 0));
            }
        } else {
            let first = (n * CHANGED_PER_PUSH) % FILES;
            for i in first..first + CHANGED_PER_PUSH {
                project.write(&format!("public/f{i}.txt"), file_content(i, n));
            }
        }
        if n % PUSHES_PER_FUNCTION == 0 {
            project.write(
                "hello.wasm",
                testfn(&format!("v{}", n / PUSHES_PER_FUNCTION)),
            );
        }
        let commit = project.commit(&format!("push {n}")).unwrap();
        project.push(&remote, "main").unwrap();
        wait_for(
            &format!("push {n} to go live"),
            Duration::from_secs(60),
            || async { (live_commit("main").await? == commit).then_some(()) },
        )
        .await;
        if n == 0 {
            store_after_first = bytes_under(&data.join("store/blobs"));
        }
    }
    eprintln!(
        "{pushes} pushes of a {FILES}-file site in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // What the live release and its history use: the first release (its
    // files, function and manifest) and, per kept push since, its changed
    // files, a manifest as large and at most one function version.
    let site_bytes = (FILES * FILE_BYTES) as u64;
    let function_bytes = testfn("v0").len() as u64;
    let manifest_bytes = store_after_first - site_bytes - function_bytes;
    let per_push = (CHANGED_PER_PUSH * FILE_BYTES) as u64 + manifest_bytes + function_bytes;
    let kept = store_after_first + HISTORY as u64 * per_push;
    let without_gc = store_after_first + (pushes as u64 - 1) * per_push;
    let store = wait_for(
        "the store to shrink to twice the live set and history",
        Duration::from_secs(30),
        || async {
            let now = bytes_under(&data.join("store/blobs"));
            (now <= 2 * kept).then_some(now)
        },
    )
    .await;
    eprintln!(
        "store: {store} bytes; live set and history {kept}; first release {store_after_first}; without collection about {without_gc}; git {} bytes",
        bytes_under(&data.join("git"))
    );

    // Compiled code of function versions no release keeps is gone: at
    // most the versions of the live release and its history stay.
    let compiled = files_under(&data.join("compiled"), ".cwasm");
    assert!(
        (1..=HISTORY + 1).contains(&compiled),
        "{compiled} compiled components on disk"
    );

    // Status shows it: the project's releases and disk, the last pass.
    let report = wait_for(
        "status to report the project's use",
        Duration::from_secs(10),
        || async {
            let s = status().await?;
            let gc = s["nodes"][0]["gc"].clone();
            // A pass after the store shrank (the wait above reads the
            // disk; the report is the last pass's).
            (gc["projects"]["shop"]["releases"] == HISTORY + 1
                && gc["store_bytes"].as_u64()? <= 2 * kept)
                .then_some(gc)
        },
    )
    .await;
    eprintln!(
        "last pass: {} ms, {} blobs stored, {} waiting",
        report["duration_ms"], report["blobs_stored"], report["blobs_waiting"]
    );
    let disk = report["projects"]["shop"]["disk_bytes"].as_u64().unwrap();
    assert!(
        disk >= site_bytes && disk <= kept,
        "shop uses {disk} bytes by status; its kept releases at most {kept}"
    );
    assert!(report["projects"]["shop"]["memory_bytes"].as_u64().unwrap() > 0);
    assert!(report["store_bytes"].as_u64().unwrap() <= 2 * kept);
    let output = std::process::Command::new(canopy_tests::canopy_bin())
        .args(["status", "--admin", &admin, "--token", &token])
        .env_remove("CANOPY_ADMIN")
        .env_remove("CANOPY_TOKEN")
        .env("XDG_STATE_HOME", "/nonexistent")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("project shop  disk"), "{text}");
    assert!(text.contains("gc         last pass freed"), "{text}");

    // The live release still serves, its newest file and its function.
    let last = pushes - 1;
    let first_changed = (last * CHANGED_PER_PUSH) % FILES;
    let body = canopy_tests::client()
        .get(format!("{http}/f{first_changed}.txt"))
        .header("host", "shop.localhost")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.as_ref(), file_content(first_changed, last));
    let answer = canopy_tests::client()
        .get(format!("{http}/api/hello"))
        .header("host", "shop.localhost")
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success());

    // A branch of its own: deleting it frees what only it used.
    project.checkout("dev").unwrap();
    let only_dev = b"only the dev branch has this file".repeat(512);
    project.write("public/dev-only.bin", &only_dev);
    let commit = project.commit("dev").unwrap();
    project.push(&remote, "dev").unwrap();
    wait_for("dev to go live", Duration::from_secs(60), || async {
        (live_commit("dev").await? == commit).then_some(())
    })
    .await;
    let dev_store = bytes_under(&data.join("store/blobs"));
    project.git(&["push", &remote, ":refs/heads/dev"]).unwrap();
    let freed = wait_for(
        "the deleted branch's blobs to be collected",
        Duration::from_secs(30),
        || async {
            let now = bytes_under(&data.join("store/blobs"));
            (now + only_dev.len() as u64 <= dev_store).then_some(dev_store - now)
        },
    )
    .await;
    eprintln!("deleting dev freed {freed} bytes");
    // Main is untouched.
    let body = canopy_tests::client()
        .get(format!("{http}/f{first_changed}.txt"))
        .header("host", "shop.localhost")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.as_ref(), file_content(first_changed, last));
}
