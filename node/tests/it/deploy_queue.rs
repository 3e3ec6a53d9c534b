//! The deploy queue through a node's real path: `git push` with the git CLI
//! to the node's Git remote, builds, and requests through its gateway.
//! One project's slow build does not hold up another project's deploy, and a
//! push past `limits.builds.max_queued_per_project` is refused with the
//! limit named and its ref left where it was.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use canopy_node::deploy::BuildLimits;
use canopy_node::deploy::build::SandboxMode;
use canopy_node::env::Env;
use canopy_node::gateway::GatewayConfig;
use canopy_node::gc::GcConfig;
use canopy_node::git::{GitHttp, GitLimits};
use canopy_node::node::{NodeSpec, P2pTransport, Services, assemble};
use canopy_node::runtime::RuntimeConfig;
use canopy_node::test_guests::Guest;

/// How long any one wait may take before it is a failure (a component
/// compiles on a busy 2-core machine).
const DEADLINE: Duration = Duration::from_secs(120);

/// A node's services with its Git remote and gateway on 127.0.0.1.
struct TestNode {
    _dir: tempfile::TempDir,
    data: PathBuf,
    services: Services<<P2pTransport as canopy_node::node::Transport>::Net>,
    git_base: String,
    http: String,
}

impl TestNode {
    async fn start(build_limits: BuildLimits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let env = Env::production(&data);
        let spec: NodeSpec<P2pTransport> = NodeSpec {
            runtime: RuntimeConfig::new(data.join("compiled")),
            builds: SandboxMode::Preferred,
            git: GitLimits::default(),
            build_limits,
            gc: GcConfig::default(),
            gateway: GatewayConfig::default(),
            cluster: None,
        };
        let services = assemble(&env, spec).await.unwrap();
        let git_base = serve_git(services.git.clone()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            services
                .gateway
                .clone()
                .serve(listener, std::future::pending()),
        );
        TestNode {
            _dir: dir,
            data,
            services,
            git_base,
            http,
        }
    }

    fn state(&self, project: &str, branch: &str) -> Option<String> {
        self.services
            .deployer
            .status()
            .into_iter()
            .find(|e| e.project == project && e.branch == branch)
            .map(|e| e.state)
    }

    async fn wait_live(&self, project: &str, branch: &str) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let status = self.services.deployer.status();
            let env = status
                .iter()
                .find(|e| e.project == project && e.branch == branch);
            if env.is_some_and(|e| e.state == "live") {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{project}@{branch} not live before the deadline: {env:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn get(&self, host: &str, path: &str) -> reqwest::StatusCode {
        reqwest::Client::new()
            .get(format!("{}{path}", self.http))
            .header("host", host)
            .timeout(DEADLINE)
            .send()
            .await
            .unwrap()
            .status()
    }
}

/// Serve `git` at `/git/` on a free port; returns its base URL.
async fn serve_git(git: Arc<GitHttp>) -> String {
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
    format!("http://{addr}/git")
}

/// A project's working copy, driven with the git CLI (no user config).
struct Project {
    _home: tempfile::TempDir,
    home: PathBuf,
    work: PathBuf,
}

impl Project {
    async fn new(remote_url: &str) -> Self {
        let home = tempfile::tempdir().unwrap();
        let work = home.path().join("work");
        std::fs::create_dir(&work).unwrap();
        std::fs::write(home.path().join("gitconfig"), "").unwrap();
        let project = Project {
            home: home.path().to_owned(),
            _home: home,
            work,
        };
        project.ok(&["init", "-q", "-b", "main"]).await;
        project.ok(&["remote", "add", "origin", remote_url]).await;
        project
    }

    async fn git(&self, args: &[&str]) -> Output {
        let mut command = tokio::process::Command::new("git");
        command
            .current_dir(&self.work)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", self.home.join("gitconfig"))
            .env("GIT_TERMINAL_PROMPT", "0")
            .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
            .args(args);
        tokio::time::timeout(DEADLINE, command.output())
            .await
            .expect("git did not finish before the deadline")
            .expect("could not run git")
    }

    async fn ok(&self, args: &[&str]) -> String {
        let output = self.git(args).await;
        let text = output_text(&output);
        assert!(output.status.success(), "git {args:?} failed:\n{text}");
        text
    }

    /// Commit `canopy.yaml` with the test function beside it.
    async fn commit(&self, yaml: &str) {
        std::fs::write(self.work.join("canopy.yaml"), yaml).unwrap();
        std::fs::write(self.work.join("fn.wasm"), testfn_wasm()).unwrap();
        self.ok(&["add", "-A"]).await;
        self.ok(&["commit", "-q", "--allow-empty", "-m", "change"])
            .await;
    }
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn testfn_wasm() -> Vec<u8> {
    let wasm = Guest::TESTFN.build().unwrap_or_else(|e| panic!("{e}"));
    std::fs::read(&wasm).unwrap()
}

fn prebuilt(project: &str) -> String {
    format!("project: {project}\nfunctions:\n  t:\n    wasm: fn.wasm\n    http: {{ path: /t }}\n")
}

/// A build that says it started (`started` in its checkout) and then waits
/// until the test lets it go (`go` beside it).
fn slow_build(project: &str) -> String {
    format!(
        "project: {project}\nfunctions:\n  t:\n    build: {{ dir: ., command: \"touch started; \
         while [ ! -e go ]; do sleep 0.05; done; cp fn.wasm out.wasm\", output: out.wasm, \
         timeout: 10m }}\n    http: {{ path: /t }}\n"
    )
}

/// The checkout whose build has started, once one has.
async fn started_build(data: &Path) -> PathBuf {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let started = std::fs::read_dir(data.join("work"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .find(|path| path.join("started").exists());
        if let Some(checkout) = started {
            return checkout;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow build did not start before the deadline"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_build_holds_up_no_other_project_and_a_full_queue_refuses_the_push() {
    let node = TestNode::start(BuildLimits {
        max_queued_per_project: 1,
        ..BuildLimits::default()
    })
    .await;

    // Project a's build runs until the test lets it go.
    let a = Project::new(&format!("{}/a.git", node.git_base)).await;
    a.commit(&slow_build("a")).await;
    a.ok(&["push", "origin", "main"]).await;
    let checkout = started_build(&node.data).await;

    // Project b deploys and serves meanwhile.
    let b = Project::new(&format!("{}/b.git", node.git_base)).await;
    b.commit(&prebuilt("b")).await;
    b.ok(&["push", "origin", "main"]).await;
    node.wait_live("b", "main").await;
    assert_eq!(node.get("b.localhost", "/t/hello").await, 200);
    assert_eq!(
        node.state("a", "main").as_deref(),
        Some("deploying"),
        "a's build is still running"
    );

    // a@main runs; one more branch of a may wait, and a newer push of it
    // takes no more room…
    a.ok(&["checkout", "-q", "-b", "one"]).await;
    a.commit(&prebuilt("a")).await;
    a.ok(&["push", "origin", "one"]).await;
    a.commit(&prebuilt("a")).await;
    a.ok(&["push", "origin", "one"]).await;
    // …but a second one is refused, naming the limit, and its ref stays put.
    a.ok(&["checkout", "-q", "-b", "two"]).await;
    let refused = a.git(&["push", "origin", "two"]).await;
    let text = output_text(&refused);
    assert!(!refused.status.success(), "{text}");
    assert!(
        text.contains(
            "! [remote rejected] two -> two (push refused: deploy queue full: project a has 1 \
             environments waiting to build (limits.builds.max_queued_per_project = 1); wait for \
             them to finish, or ask the operator to raise it)"
        ),
        "{text}"
    );
    let branches: Vec<String> = node
        .services
        .git
        .branches("a")
        .unwrap()
        .into_iter()
        .map(|(branch, _)| branch)
        .collect();
    assert_eq!(branches, ["main", "one"]);
    assert_eq!(node.state("a", "two"), None);

    // Let a's build go: main goes live, then the branch that waited.
    std::fs::write(checkout.join("go"), "").unwrap();
    node.wait_live("a", "main").await;
    node.wait_live("a", "one").await;
    assert_eq!(node.get("a.localhost", "/t/hello").await, 200);
    // With room again, the refused branch is accepted.
    a.ok(&["push", "origin", "two"]).await;
    node.wait_live("a", "two").await;
}
