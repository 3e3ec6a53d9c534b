//! `git push` with the real git CLI against `GitHttp` mounted at `/git/` on a
//! hyper server: every push produces the expected `PushEvent`, and `checkout`
//! yields exactly the committed files.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use bytes::Bytes;
use canopy_node::git::{
    GitHttp, GitLimits, PushEvent, RefUpdate, RepackPolicy, Repos, checkout, commit_info, read_file,
};
use http_body_util::BodyExt;
use rand::{RngCore, SeedableRng};
use tokio::sync::mpsc::UnboundedReceiver;

/// How long any one wait in these tests may take before it is a failure.
const DEADLINE: Duration = Duration::from_secs(60);

/// A Git remote served over HTTP on 127.0.0.1, with its repositories in a
/// temporary directory.
struct Remote {
    _dir: tempfile::TempDir,
    repos_root: PathBuf,
    base_url: String,
    events: UnboundedReceiver<PushEvent>,
}

impl Remote {
    async fn start(max_push_bytes: Option<u64>) -> Self {
        let mut limits = GitLimits::default();
        if let Some(max) = max_push_bytes {
            limits.max_push_bytes = max;
        }
        Self::start_with(limits).await
    }

    async fn start_with(limits: GitLimits) -> Self {
        Self::start_configured(limits, None).await
    }

    async fn start_configured(limits: GitLimits, repack: Option<RepackPolicy>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repos_root = dir.path().join("repos");
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let git = GitHttp::new(Repos::new(&repos_root).unwrap(), tx)
            .with_mount_prefix("/git/")
            .with_limits(limits)
            .with_repack(repack, canopy_node::env::Clock::tokio());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let git = git.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let git = git.clone();
                        async move { Ok::<_, Infallible>(git.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Remote {
            _dir: dir,
            repos_root,
            base_url: format!("http://{addr}/git"),
            events,
        }
    }

    fn url(&self, repo: &str) -> String {
        format!("{}/{repo}", self.base_url)
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.repos_root.join(format!("{repo}.git"))
    }

    async fn next_event(&mut self) -> PushEvent {
        tokio::time::timeout(DEADLINE, self.events.recv())
            .await
            .expect("no push event before the deadline")
            .expect("event channel closed")
    }

    /// Events are sent before the push is answered, so after a push returned
    /// there is nothing more to wait for.
    fn assert_no_event(&mut self) {
        if let Ok(event) = self.events.try_recv() {
            panic!("unexpected push event {event:?}");
        }
    }
}

/// A local repository driven with the git CLI, isolated from the user's config.
struct Client {
    _home: tempfile::TempDir,
    home: PathBuf,
    work: PathBuf,
}

impl Client {
    async fn new(remote_url: &str) -> Self {
        let home = tempfile::tempdir().unwrap();
        let home_path = home.path().to_owned();
        let work = home_path.join("work");
        std::fs::create_dir(&work).unwrap();
        std::fs::write(home_path.join("gitconfig"), "").unwrap();
        let client = Client {
            _home: home,
            home: home_path,
            work,
        };
        client.ok(&["init", "-q", "-b", "main"]).await;
        client.ok(&["remote", "add", "origin", remote_url]).await;
        client
    }

    async fn git(&self, args: &[&str]) -> Output {
        let mut command = tokio::process::Command::new("git");
        command
            .current_dir(&self.work)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", self.home.join("gitconfig"))
            .env("GIT_TERMINAL_PROMPT", "0")
            .args([
                "-c",
                "user.name=Test Author",
                "-c",
                "user.email=author@example.com",
                "-c",
                "commit.gpgsign=false",
                "-c",
                "core.symlinks=true",
            ])
            .args(args);
        tokio::time::timeout(DEADLINE, command.output())
            .await
            .expect("git did not finish before the deadline")
            .expect("could not run git")
    }

    /// Runs git and requires success; returns stdout + stderr.
    async fn ok(&self, args: &[&str]) -> String {
        let output = self.git(args).await;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "git {args:?} failed:\n{text}");
        text
    }

    async fn head(&self) -> gix::ObjectId {
        let out = self.git(&["rev-parse", "HEAD"]).await;
        gix::ObjectId::from_hex(String::from_utf8(out.stdout).unwrap().trim().as_bytes()).unwrap()
    }

    fn write(&self, path: &str, content: &[u8]) {
        let path = self.work.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    async fn commit_all(&self, message: &str) -> gix::ObjectId {
        self.ok(&["add", "-A"]).await;
        self.ok(&["commit", "-q", "-m", message]).await;
        self.head().await
    }
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand_chacha::ChaCha20Rng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

/// What a file tree holds: path → file content (with its executable bit) or
/// symlink target.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    File { content: Vec<u8>, executable: bool },
    Link(PathBuf),
}

fn snapshot(root: &Path, skip: &[&str]) -> BTreeMap<String, Node> {
    fn walk(root: &Path, dir: &Path, skip: &[&str], out: &mut BTreeMap<String, Node>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if skip.contains(&rel.as_str()) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(rel, Node::Link(std::fs::read_link(&path).unwrap()));
            } else if meta.is_dir() {
                walk(root, &path, skip, out);
            } else {
                let executable = meta.permissions().mode() & 0o111 != 0;
                out.insert(
                    rel,
                    Node::File {
                        content: std::fs::read(&path).unwrap(),
                        executable,
                    },
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, skip, &mut out);
    out
}

/// Checks out `commit` from the remote's repository and compares it with the
/// client's work tree (minus `.git` and whatever `skip` names).
fn assert_checkout_matches(remote: &Remote, client: &Client, commit: gix::ObjectId, skip: &[&str]) {
    let dest = tempfile::tempdir().unwrap();
    let out = dest.path().join("tree");
    checkout(&remote.repo_dir("shop"), commit, &out).unwrap();
    let mut skip_in_work = vec![".git"];
    skip_in_work.extend_from_slice(skip);
    let expected = snapshot(&client.work, &skip_in_work);
    let actual = snapshot(&out, &[]);
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "checkout has other files than the commit"
    );
    assert!(
        actual == expected,
        "checkout content differs from the commit"
    );
}

fn update(branch: &str, old: Option<gix::ObjectId>, new: Option<gix::ObjectId>) -> RefUpdate {
    RefUpdate {
        refname: format!("refs/heads/{branch}"),
        branch: Some(branch.to_owned()),
        old,
        new,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_produce_events_and_checkouts_match() {
    let mut remote = Remote::start(None).await;
    let client = Client::new(&remote.url("shop.git")).await;

    // 1. First push of a new branch: a 3 MB binary, an executable script, a
    //    symlink inside the tree and one pointing outside (not checked out).
    client.write("canopy.yaml", b"project: shop\n");
    client.write("functions/app.bin", &random_bytes(1, 3 * 1024 * 1024));
    client.write("scripts/build.sh", b"#!/bin/sh\necho build\n");
    std::fs::set_permissions(
        client.work.join("scripts/build.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("../canopy.yaml", client.work.join("scripts/config.yaml")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", client.work.join("outside")).unwrap();
    let first = client.commit_all("First commit\n\nWith a body.").await;
    let out = client.ok(&["push", "origin", "main"]).await;
    let short = first.to_hex_with_len(7).to_string();
    assert!(
        out.contains(&format!(
            "remote: canopy: received {short} on main; deploying — see `canopy status`"
        )),
        "{out}"
    );
    let event = remote.next_event().await;
    assert_eq!(
        event,
        PushEvent {
            repo: "shop".into(),
            pusher: None,
            updates: vec![update("main", None, Some(first))]
        }
    );
    assert_checkout_matches(&remote, &client, first, &["outside"]);
    let info = commit_info(&remote.repo_dir("shop"), first).unwrap();
    assert_eq!(info.summary, "First commit");
    assert_eq!(info.author, "Test Author <author@example.com>");
    assert_eq!(
        read_file(&remote.repo_dir("shop"), first, "canopy.yaml")
            .unwrap()
            .as_deref(),
        Some(&b"project: shop\n"[..])
    );
    assert_eq!(
        read_file(&remote.repo_dir("shop"), first, "functions").unwrap(),
        None
    );
    assert_eq!(
        read_file(&remote.repo_dir("shop"), first, "missing.txt").unwrap(),
        None
    );

    // 2. An incremental push: a few bytes of the big binary change, so git
    //    sends a thin pack whose delta base exists only on the remote.
    let mut binary = random_bytes(1, 3 * 1024 * 1024);
    binary[1000..1010].copy_from_slice(b"0123456789");
    client.write("functions/app.bin", &binary);
    client.write("README.md", b"# shop\n");
    let second = client.commit_all("Second").await;
    let out = client.ok(&["push", "--progress", "origin", "main"]).await;
    assert!(out.contains("main -> main"), "{out}");
    // git sent the binary as a delta against a base it did not send ...
    assert!(out.contains("(delta 1)"), "the push was not thin: {out}");
    let event = remote.next_event().await;
    assert_eq!(
        event.updates,
        vec![update("main", Some(first), Some(second))]
    );
    assert_checkout_matches(&remote, &client, second, &["outside"]);
    // ... and the remote completed that thin pack with the 3 MB base from its
    // own objects (as `git index-pack --fix-thin` does), so the stored pack
    // is as large as the first one.
    let mut pack_sizes: Vec<u64> = std::fs::read_dir(remote.repo_dir("shop").join("objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    pack_sizes.sort();
    let keep_files = std::fs::read_dir(remote.repo_dir("shop").join("objects/pack"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "keep")
        })
        .count();
    assert_eq!(keep_files, 0, "a .keep file was left behind");
    assert_eq!(pack_sizes.len(), 2, "{pack_sizes:?}");
    assert!(pack_sizes[0] > 3 * 1000 * 1000, "{pack_sizes:?}");

    // 3. A second branch.
    client.ok(&["checkout", "-q", "-b", "feature/login"]).await;
    client.write("login.txt", b"login\n");
    let feature = client.commit_all("Login").await;
    let out = client.ok(&["push", "origin", "feature/login"]).await;
    assert!(out.contains("on feature/login"), "{out}");
    let event = remote.next_event().await;
    assert_eq!(
        event.updates,
        vec![update("feature/login", None, Some(feature))]
    );
    assert_checkout_matches(&remote, &client, feature, &["outside"]);

    // 4. A force push rewriting main.
    client.ok(&["checkout", "-q", "main"]).await;
    client.write("README.md", b"# shop, amended\n");
    client.ok(&["add", "-A"]).await;
    client
        .ok(&["commit", "-q", "--amend", "-m", "Second, amended"])
        .await;
    let amended = client.head().await;
    let refused = client.git(&["push", "origin", "main"]).await;
    assert!(
        !refused.status.success(),
        "a non-fast-forward push without --force must fail"
    );
    let out = client.ok(&["push", "--force", "origin", "main"]).await;
    assert!(out.contains("forced update"), "{out}");
    let event = remote.next_event().await;
    assert_eq!(
        event.updates,
        vec![update("main", Some(second), Some(amended))]
    );
    assert_checkout_matches(&remote, &client, amended, &["outside"]);

    // 5. A tag is stored but announces nothing.
    client.ok(&["tag", "-a", "v1", "-m", "v1"]).await;
    client.ok(&["push", "origin", "v1"]).await;
    remote.assert_no_event();

    // 6. Deleting a branch.
    client
        .ok(&["push", "origin", "--delete", "feature/login"])
        .await;
    let event = remote.next_event().await;
    assert_eq!(
        event.updates,
        vec![update("feature/login", Some(feature), None)]
    );

    let repos = Repos::new(&remote.repos_root).unwrap();
    assert_eq!(
        repos.branches("shop").unwrap(),
        vec![("main".to_owned(), amended)]
    );
    assert_eq!(repos.list().unwrap(), vec!["shop".to_owned()]);
    let repo = gix::open(remote.repo_dir("shop")).unwrap();
    let tag = repo.find_reference("refs/tags/v1").unwrap();
    assert!(tag.target().try_id().is_some());
    remote.assert_no_event();
}

/// A receive-pack request with old values that no longer match: both the
/// update and the delete are refused with `stale info`, nothing moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_old_value_is_refused() {
    let mut remote = Remote::start(None).await;
    let client = Client::new(&remote.url("shop")).await;
    client.write("a.txt", b"a\n");
    let a = client.commit_all("A").await;
    client.write("a.txt", b"b\n");
    let b = client.commit_all("B").await;
    client.ok(&["push", "origin", "main"]).await;
    client.write("a.txt", b"c\n");
    let c = client.commit_all("C").await;
    client
        .ok(&["push", "origin", "HEAD:refs/heads/other"])
        .await;
    assert_eq!(
        remote.next_event().await.updates,
        vec![update("main", None, Some(b))]
    );
    assert_eq!(
        remote.next_event().await.updates,
        vec![update("other", None, Some(c))]
    );

    // The client believes main and other are still at A.
    let mut request = Vec::new();
    let lines = [
        format!("{a} {c} refs/heads/main\0report-status agent=test\n"),
        format!("{a} 0000000000000000000000000000000000000000 refs/heads/other\n"),
    ];
    for line in &lines {
        request.extend_from_slice(format!("{:04x}", line.len() + 4).as_bytes());
        request.extend_from_slice(line.as_bytes());
    }
    request.extend_from_slice(b"0000");
    let empty_pack = std::process::Command::new("git")
        .args(["pack-objects", "--stdout"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(empty_pack.status.success());
    request.extend_from_slice(&empty_pack.stdout);

    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = http::Request::post(format!("{}/git-receive-pack", remote.url("shop.git")))
        .header("content-type", "application/x-git-receive-pack-request")
        .body(http_body_util::Full::new(Bytes::from(request)))
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, http.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/x-git-receive-pack-result"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("unpack ok\n"), "{body}");
    assert!(body.contains("ng refs/heads/main stale info\n"), "{body}");
    assert!(body.contains("ng refs/heads/other stale info\n"), "{body}");
    remote.assert_no_event();
    let repos = Repos::new(&remote.repos_root).unwrap();
    assert_eq!(
        repos.branches("shop").unwrap(),
        vec![("main".to_owned(), b), ("other".to_owned(), c)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_and_fetch_are_refused() {
    let remote = Remote::start(None).await;
    let client = Client::new(&remote.url("shop.git")).await;
    let clone = client
        .git(&["clone", &remote.url("shop.git"), "copy"])
        .await;
    assert!(!clone.status.success());
    let stderr = String::from_utf8_lossy(&clone.stderr);
    assert!(stderr.contains("accepts pushes only"), "{stderr}");
    let fetch = client.git(&["fetch", "origin"]).await;
    assert!(!fetch.status.success());
    assert!(String::from_utf8_lossy(&fetch.stderr).contains("accepts pushes only"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_push_is_refused_with_a_clear_message() {
    let mut remote = Remote::start(Some(1024 * 1024)).await;
    let client = Client::new(&remote.url("shop.git")).await;
    client.write("big.bin", &random_bytes(2, 3 * 1024 * 1024));
    client.commit_all("Big").await;
    let push = client.git(&["push", "origin", "main"]).await;
    assert!(!push.status.success());
    let stderr = String::from_utf8_lossy(&push.stderr);
    assert!(
        stderr.contains("larger than this node's limit limits.git.max_push_bytes = 1048576 bytes"),
        "{stderr}"
    );
    remote.assert_no_event();
    assert!(
        Repos::new(&remote.repos_root)
            .unwrap()
            .list()
            .unwrap()
            .is_empty()
    );
}

/// The pack files in `repo`'s object store.
fn pack_files(repo: &std::path::Path) -> Vec<String> {
    match std::fs::read_dir(repo.join("objects/pack")) {
        Ok(dir) => dir
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Push `main` to a remote with `limits`: refused with `needle` in git's
/// output, no event, no branch, and no pack left behind.
async fn assert_refused(limits: GitLimits, setup: impl AsyncFnOnce(&Client), needle: &str) {
    let mut remote = Remote::start_with(limits).await;
    let client = Client::new(&remote.url("shop.git")).await;
    setup(&client).await;
    let push = client.git(&["push", "origin", "main"]).await;
    assert!(!push.status.success(), "the push went through");
    let stderr = String::from_utf8_lossy(&push.stderr);
    assert!(stderr.contains(needle), "{stderr}");
    remote.assert_no_event();
    let repos = Repos::new(&remote.repos_root).unwrap();
    assert!(repos.branches("shop").unwrap_or_default().is_empty());
    let packs = pack_files(&remote.repo_dir("shop"));
    assert!(packs.is_empty(), "a refused push left {packs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_over_a_git_limit_is_refused_naming_it_and_stores_nothing() {
    // A checkout bomb of many small files.
    let many_files = GitLimits {
        max_files: 50,
        ..GitLimits::default()
    };
    assert_refused(
        many_files,
        async |client: &Client| {
            for i in 0..60 {
                client.write(
                    &format!("site/page-{i}.html"),
                    format!("page {i}").as_bytes(),
                );
            }
            client.commit_all("Many").await;
        },
        "limits.git.max_files = 50",
    )
    .await;

    // One file larger than the whole checkout may be (it compresses well,
    // so the pack itself is small).
    let small_checkout = GitLimits {
        max_checkout_bytes: 1 << 20,
        ..GitLimits::default()
    };
    assert_refused(
        small_checkout,
        async |client: &Client| {
            client.write("huge.txt", &vec![b'a'; 8 << 20]);
            client.commit_all("Huge").await;
        },
        "limits.git.max_checkout_bytes = 1MiB",
    )
    .await;

    // An object bomb: a few kilobytes of pack that inflate to one object
    // larger than indexing may hold in memory.
    let small_objects = GitLimits {
        max_object_bytes: 1 << 20,
        ..GitLimits::default()
    };
    assert_refused(
        small_objects,
        async |client: &Client| {
            client.write("bomb.bin", &vec![0u8; 16 << 20]);
            client.commit_all("Bomb").await;
        },
        "limits.git.max_object_bytes = 1MiB",
    )
    .await;

    let few_objects = GitLimits {
        max_pack_objects: 5,
        ..GitLimits::default()
    };
    assert_refused(
        few_objects,
        async |client: &Client| {
            for i in 0..10 {
                client.write(&format!("f{i}.txt"), format!("file {i}").as_bytes());
            }
            client.commit_all("Objects").await;
        },
        "limits.git.max_pack_objects = 5",
    )
    .await;

    let short_paths = GitLimits {
        max_path_bytes: 32,
        ..GitLimits::default()
    };
    assert_refused(
        short_paths,
        async |client: &Client| {
            client.write(&format!("deep/{}/index.html", "d".repeat(40)), b"deep");
            client.commit_all("Deep").await;
        },
        "limits.git.max_path_bytes = 32",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_per_repository_are_bounded() {
    let mut remote = Remote::start_with(GitLimits {
        max_refs: 2,
        ..GitLimits::default()
    })
    .await;
    let client = Client::new(&remote.url("shop.git")).await;
    client.write("index.html", b"one");
    client.commit_all("One").await;
    client.ok(&["branch", "two"]).await;
    client.ok(&["branch", "three"]).await;
    let push = client
        .git(&["push", "origin", "main", "two", "three"])
        .await;
    assert!(!push.status.success());
    let stderr = String::from_utf8_lossy(&push.stderr);
    assert!(stderr.contains("limits.git.max_refs = 2"), "{stderr}");
    let event = remote.next_event().await;
    assert_eq!(event.updates.len(), 2, "{event:?}");
    let repos = Repos::new(&remote.repos_root).unwrap();
    assert_eq!(repos.branches("shop").unwrap().len(), 2);
    // Deleting one makes room for another.
    client.ok(&["push", "origin", "--delete", "two"]).await;
    remote.next_event().await;
    client.ok(&["push", "origin", "three"]).await;
    remote.next_event().await;
    assert_eq!(repos.branches("shop").unwrap().len(), 2);
}

/// Wait until `done` holds, failing after [`DEADLINE`].
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn has_object(repo: &Path, id: &str) -> bool {
    let repo = gix::open(repo).unwrap();
    repo.has_object(gix::ObjectId::from_hex(id.as_bytes()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_merge_packs_and_a_deleted_branch_leaves_nothing_behind() {
    let policy = RepackPolicy {
        max_packs: 3,
        min_age: Duration::ZERO,
    };
    let mut remote = Remote::start_configured(GitLimits::default(), Some(policy)).await;
    let client = Client::new(&remote.url("shop.git")).await;
    let repo = remote.repo_dir("shop");
    client.write("canopy.yaml", b"project: shop\n");
    for i in 0..8 {
        client.write("site/index.html", format!("version {i}").as_bytes());
        client.write(
            &format!("site/page-{i}.html"),
            format!("page {i}").as_bytes(),
        );
        client.commit_all(&format!("Push {i}")).await;
        client.ok(&["push", "origin", "main"]).await;
        remote.next_event().await;
    }
    // Eight pushes, eight packs, but never more than the policy allows
    // for long: they are merged into one.
    eventually("the packs to be merged", || {
        pack_files(&repo)
            .iter()
            .filter(|f| f.ends_with(".pack"))
            .count()
            <= 3
    })
    .await;

    // Every commit's files are still there, and the next push (a thin
    // pack against what the merged pack holds) goes through.
    let main = client.ok(&["rev-parse", "HEAD"]).await;
    let main = gix::ObjectId::from_hex(main.trim().as_bytes()).unwrap();
    let out = tempfile::tempdir().unwrap();
    checkout(&repo, main, out.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.path().join("site/page-0.html")).unwrap(),
        "page 0"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("site/index.html")).unwrap(),
        "version 7"
    );
    for i in 0..8 {
        let first = client.ok(&["rev-parse", &format!("HEAD~{i}")]).await;
        assert!(has_object(&repo, first.trim()), "commit HEAD~{i} is gone");
    }
    client.write("site/index.html", b"version 8");
    client.commit_all("Push 8").await;
    client.ok(&["push", "origin", "main"]).await;
    remote.next_event().await;

    // A branch with a file of its own, then deleted: the file goes.
    client.ok(&["checkout", "-q", "-b", "preview"]).await;
    client.write("site/secret.html", b"only on preview");
    client.commit_all("Preview").await;
    client.ok(&["push", "origin", "preview"]).await;
    remote.next_event().await;
    let secret = client.ok(&["rev-parse", "HEAD:site/secret.html"]).await;
    let secret = secret.trim().to_owned();
    assert!(has_object(&repo, &secret));
    client.ok(&["push", "origin", ":preview"]).await;
    eventually("the deleted branch's file to go", || {
        !has_object(&repo, &secret)
    })
    .await;
    let main = client.ok(&["rev-parse", "main"]).await;
    let main = gix::ObjectId::from_hex(main.trim().as_bytes()).unwrap();
    let again = tempfile::tempdir().unwrap();
    checkout(&repo, main, again.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(again.path().join("site/index.html")).unwrap(),
        "version 8"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_young_pack_keeps_every_object_when_packs_are_merged() {
    // Every pack is younger than an hour: merged, but nothing dropped.
    let policy = RepackPolicy {
        max_packs: 2,
        min_age: Duration::from_secs(3600),
    };
    let mut remote = Remote::start_configured(GitLimits::default(), Some(policy)).await;
    let client = Client::new(&remote.url("shop.git")).await;
    let repo = remote.repo_dir("shop");
    client.write("canopy.yaml", b"project: shop\n");
    client.commit_all("First").await;
    client.ok(&["push", "origin", "main"]).await;
    remote.next_event().await;
    client.ok(&["checkout", "-q", "-b", "preview"]).await;
    client.write("site/draft.html", b"a draft");
    client.commit_all("Draft").await;
    client.ok(&["push", "origin", "preview"]).await;
    remote.next_event().await;
    let draft = client.ok(&["rev-parse", "HEAD:site/draft.html"]).await;
    let draft = draft.trim().to_owned();
    client.ok(&["checkout", "-q", "main"]).await;
    for i in 0..4 {
        client.write("site/index.html", format!("version {i}").as_bytes());
        client.commit_all(&format!("Push {i}")).await;
        client.ok(&["push", "origin", "main"]).await;
        remote.next_event().await;
    }
    client.ok(&["push", "origin", ":preview"]).await;
    eventually("the packs to be merged", || {
        pack_files(&repo)
            .iter()
            .filter(|f| f.ends_with(".pack"))
            .count()
            <= 2
    })
    .await;
    assert!(
        has_object(&repo, &draft),
        "a young pack's object was dropped"
    );
}
