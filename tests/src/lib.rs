//! Test harness for end-to-end tests: start real `canopy` processes on free
//! ports, push real Git repositories to them, and wait on conditions with
//! deadlines (never fixed sleeps).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use canopy_node::test_guests::Guest;
use serde_json::Value;

/// The workspace root: that of the checkout `cargo test` runs in.
///
/// From `CARGO_MANIFEST_DIR` at run time (cargo sets it for the test
/// process), not only at compile time: several checkouts (git worktrees)
/// sharing one `CARGO_TARGET_DIR` share this library's compiled artifact,
/// and the compile-time path would be the checkout that built it first.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .expect("tests/ is in the workspace")
        .to_owned()
}

/// The build profile this test or bench binary was built in, and its
/// output directory: cargo puts the binary in `<target>/<dir>/deps/`, where
/// `<dir>` is `debug` for the `dev` profile and the profile's name otherwise.
fn own_profile() -> (String, PathBuf) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test binary lives in <target>/<profile>/deps")
        .to_owned();
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let profile = if name == "debug" {
        "dev".to_owned()
    } else {
        name
    };
    (profile, dir)
}

/// The build profile of this test run (`dev` for `cargo test`, `sim` for
/// `./scripts/test`), for messages that say what was measured.
pub fn build_profile() -> String {
    own_profile().0
}

/// The `canopy` binary of this build: the one beside this test binary, in
/// the same target directory and profile.
///
/// `cargo test --workspace` builds it (canopy-node has integration tests);
/// when it is missing or older than the node's sources (say, after `cargo
/// test -p canopy-tests`) it is built here, in the same profile.
pub fn canopy_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let (profile, dir) = own_profile();
        let bin = dir.join("canopy");
        let built_at = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        let sources_at = newest_mtime(&workspace_root().join("node/src"));
        if built_at.is_none_or(|built| sources_at.is_some_and(|src| src > built)) {
            let status = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "--profile", &profile])
                .args(["-p", "canopy-node", "--bin", "canopy"])
                .current_dir(workspace_root())
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the canopy binary failed");
        }
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}

/// The newest modification time of any file below `dir` (skipping `target`).
fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    let mut stack = vec![dir.to_owned()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name() != Some("target".as_ref()) {
                    stack.push(path);
                }
            } else if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                newest = newest.max(Some(modified));
            }
        }
    }
    newest
}

/// The machine the tests run on. The end-to-end tests were four test
/// binaries, which cargo ran one after another; in one binary they run at
/// once, so a test that starts many processes (a multi-node cluster, VMs)
/// takes the machine to itself, and single dreams share it.
static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Hold while running a single dream: dreams run side by side, but not
/// beside a test that has [`own_machine`].
pub async fn share_machine() -> tokio::sync::RwLockReadGuard<'static, ()> {
    MACHINE.read().await
}

/// Hold while running several node processes: no other test that starts
/// processes runs meanwhile.
pub async fn own_machine() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    MACHINE.write().await
}

/// [`own_machine`] for a test outside an async runtime (the appliance's
/// VMs).
pub fn own_machine_blocking() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    MACHINE.blocking_write()
}

/// Poll `check` until it returns `Some`, or fail after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until `child` writes the JSON file `path` (how `canopy dream` and
/// `canopy node` say they are ready); fail with `log()` if it exits first or
/// the deadline passes.
fn wait_for_json(
    path: &Path,
    child: &mut Child,
    timeout: Duration,
    log: impl Fn() -> String,
) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            return Ok(v);
        }
        if let Some(status) = child.try_wait()? {
            bail!("it exited with {status}:\n{}", log());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "no {} within {} s:\n{}",
                path.display(),
                timeout.as_secs(),
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `canopy dream`.
pub struct Dream {
    child: Option<Child>,
    /// Nodes this harness restarted itself (`Dream::restart_node`).
    restarted: Vec<Child>,
    pub data_dir: PathBuf,
    /// `http://canopy:TOKEN@…/git/`: push URLs are `<git_base><project>.git`.
    pub git_base: String,
    /// The dream's admin token.
    pub token: String,
    pub http: String,
    pub admin: String,
    pub facts: Value,
    _temp: Option<tempfile::TempDir>,
}

impl Dream {
    /// Start a dream on a fresh temporary data directory.
    pub fn start() -> Result<Dream> {
        let temp = tempfile::tempdir()?;
        let mut dream = Self::start_in(temp.path())?;
        dream._temp = Some(temp);
        Ok(dream)
    }

    /// Start a dream on `data_dir` (kept after the dream stops).
    pub fn start_in(data_dir: &Path) -> Result<Dream> {
        Self::start_with(&canopy_bin(), data_dir)
    }

    /// Start a dream of the `canopy` binary `bin` (a release build, for
    /// benchmarks) on `data_dir` (kept after the dream stops).
    pub fn start_with(bin: &Path, data_dir: &Path) -> Result<Dream> {
        Self::start_args(bin, data_dir, &[])
    }

    /// Start an `n`-node dream (`canopy dream --nodes n`) on a fresh
    /// temporary data directory.
    pub fn start_nodes(n: u16) -> Result<Dream> {
        let temp = tempfile::tempdir()?;
        let mut dream = Self::start_args(&canopy_bin(), temp.path(), &["--nodes", &n.to_string()])?;
        dream._temp = Some(temp);
        Ok(dream)
    }

    /// Start `canopy dream --data-dir DATA_DIR ARGS…` of binary `bin`.
    pub fn start_args(bin: &Path, data_dir: &Path, args: &[&str]) -> Result<Dream> {
        let facts_path = data_dir.join("dream.json");
        let _ = std::fs::remove_file(&facts_path);
        let log = std::fs::File::create(data_dir.join("dream.log")).or_else(|_| {
            std::fs::create_dir_all(data_dir)?;
            std::fs::File::create(data_dir.join("dream.log"))
        })?;
        let mut child = Command::new(bin)
            .arg("dream")
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            // The pointer other commands find a dream by stays in the test's
            // directory, not the user's home.
            .env("XDG_STATE_HOME", data_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting canopy dream")?;
        let facts = wait_for_json(&facts_path, &mut child, Duration::from_secs(180), || {
            std::fs::read_to_string(data_dir.join("dream.log")).unwrap_or_default()
        })
        .context("canopy dream did not become ready")?;
        let field = |k: &str| {
            facts[k]
                .as_str()
                .map(str::to_owned)
                .context(format!("dream.json lacks {k}"))
        };
        Ok(Dream {
            git_base: field("git_base")?,
            token: field("token")?,
            http: field("http")?,
            admin: field("admin")?,
            data_dir: data_dir.to_owned(),
            facts,
            child: Some(child),
            restarted: Vec::new(),
            _temp: None,
        })
    }

    /// The nodes dream.json lists.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.facts["nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .map(|n| NodeInfo {
                        http: n["http"].as_str().unwrap_or_default().to_owned(),
                        admin: n["admin"].as_str().unwrap_or_default().to_owned(),
                        git_base: n["git_base"].as_str().unwrap_or_default().to_owned(),
                        token: self.token.clone(),
                        pid: n["pid"].as_u64().unwrap_or(0) as u32,
                        config: n["config"].as_str().unwrap_or_default().to_owned(),
                        data_dir: PathBuf::from(n["data_dir"].as_str().unwrap_or_default()),
                        id: n["id"].as_str().unwrap_or_default().to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Node `i` (0-based) of a multi-node dream.
    pub fn node(&self, i: usize) -> NodeInfo {
        self.nodes().swap_remove(i)
    }

    /// Kill node `i` (SIGKILL: no clean shutdown) and wait until it is gone.
    pub fn kill_node(&self, i: usize) {
        let node = self.node(i);
        // SAFETY: signalling a process this test's dream started.
        unsafe { libc::kill(node.pid as i32, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(20);
        // The dream reaps its child; wait until the pid is gone.
        while Path::new(&format!("/proc/{}", node.pid)).exists()
            && std::fs::read_to_string(format!("/proc/{}/stat", node.pid))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false)
        {
            assert!(Instant::now() < deadline, "node {i} did not die");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start node `i` again from its config (as an operator would) and wait
    /// until it is ready; it is stopped when the dream is dropped.
    pub fn restart_node(&mut self, i: usize) -> Result<NodeInfo> {
        let node = self.node(i);
        let node_json = node.data_dir.join("node.json");
        let _ = std::fs::remove_file(&node_json);
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(node.data_dir.join("node.log"))?;
        let mut child = Command::new(canopy_bin())
            .arg("node")
            .arg("--config")
            .arg(&node.config)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,libp2p=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let facts = wait_for_json(&node_json, &mut child, Duration::from_secs(60), || {
            std::fs::read_to_string(node.data_dir.join("node.log")).unwrap_or_default()
        })
        .with_context(|| format!("node {i} did not become ready"))?;
        let info = NodeInfo {
            http: facts["http"].as_str().unwrap_or_default().to_owned(),
            admin: facts["admin"].as_str().unwrap_or_default().to_owned(),
            git_base: with_token(facts["git_base"].as_str().unwrap_or_default(), &self.token),
            pid: child.id(),
            ..node
        };
        self.restarted.push(child);
        Ok(info)
    }

    /// The push URL of `project` (token included).
    pub fn remote(&self, project: &str) -> String {
        format!("{}{project}.git", self.git_base)
    }

    /// The process id of the running dream.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stop with SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("canopy dream did not stop within 20s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The dream's log so far (stdout and stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("dream.log")).unwrap_or_default()
    }

    /// GET `path` on the gateway with `Host: host`.
    pub async fn get(&self, host: &str, path: &str) -> reqwest::Response {
        client()
            .get(format!("{}{path}", self.http))
            .header("host", host)
            .send()
            .await
            .expect("gateway answers")
    }

    /// The admin API's status report (as the dream's admin).
    pub async fn status(&self) -> Value {
        client()
            .get(format!("{}/api/status", self.admin))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("admin answers")
            .json()
            .await
            .expect("status is JSON")
    }

    /// The status entry of one environment, if any.
    pub async fn environment(&self, project: &str, branch: &str) -> Option<Value> {
        let status = self.status().await;
        status["deployments"]
            .as_array()?
            .iter()
            .find(|d| d["project"] == project && d["branch"] == branch)
            .cloned()
    }

    /// Wait until `commit` is live for project/branch; panics with the
    /// environment's error if that push fails instead.
    pub async fn wait_live(&self, project: &str, branch: &str, commit: &str) {
        wait_for(
            &format!("{project}@{branch} live at {commit}"),
            Duration::from_secs(120),
            || async {
                let env = self.environment(project, branch).await?;
                if env["failed_commit"] == commit {
                    panic!(
                        "push {commit} of {project}@{branch} failed: {}\n{}",
                        env["error"],
                        self.log()
                    );
                }
                (env["live_commit"] == commit && env["pending_commit"].is_null()).then_some(())
            },
        )
        .await
    }

    /// Wait until the push of `commit` has failed, and return its error.
    pub async fn wait_failed(&self, project: &str, branch: &str, commit: &str) -> String {
        wait_for(
            &format!("{project}@{branch} push {commit} to fail"),
            Duration::from_secs(120),
            || async {
                let env = self.environment(project, branch).await?;
                (env["failed_commit"] == commit && env["pending_commit"].is_null())
                    .then(|| env["error"].as_str().unwrap_or_default().to_owned())
            },
        )
        .await
    }
}

impl Drop for Dream {
    fn drop(&mut self) {
        for mut child in self.restarted.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.child.is_some() {
            // A clean stop lets a multi-node dream stop its node processes.
            let _ = self.stop();
        }
        // Whatever is left (a dream that could not stop cleanly).
        for node in self.nodes() {
            if node.pid != 0 {
                // SAFETY: signalling a process this test's dream started.
                unsafe { libc::kill(node.pid as i32, libc::SIGKILL) };
            }
        }
    }
}

/// One node of a multi-node dream.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: String,
    pub http: String,
    pub admin: String,
    /// `http://canopy:TOKEN@…/git/`.
    pub git_base: String,
    /// The dream's admin token (every node accepts it).
    pub token: String,
    pub pid: u32,
    pub config: String,
    pub data_dir: PathBuf,
}

impl NodeInfo {
    /// The push URL of `project` on this node (token included).
    pub fn remote(&self, project: &str) -> String {
        format!("{}{project}.git", self.git_base)
    }

    /// GET `path` on this node's gateway with `Host: host`.
    pub async fn get(&self, host: &str, path: &str) -> Option<reqwest::Response> {
        client()
            .get(format!("{}{path}", self.http))
            .header("host", host)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()
    }

    /// GET on this node's gateway: status and body, `None` if it does not answer.
    pub async fn body(&self, host: &str, path: &str) -> Option<(u16, String)> {
        let response = self.get(host, path).await?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// This node's admin status report (as the dream's admin).
    pub async fn status(&self) -> Option<Value> {
        status_json(&self.admin, &self.token).await
    }

    /// Wait until this node answers `path` on `host` with 200 and a body
    /// containing `needle`. On timeout the panic shows the last answer,
    /// the node's status and the end of its log.
    pub async fn wait_serving(&self, host: &str, path: &str, needle: &str) {
        let timeout = Duration::from_secs(60);
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            let answer = self.body(host, path).await;
            if answer
                .as_ref()
                .is_some_and(|(status, body)| *status == 200 && body.contains(needle))
            {
                return;
            }
            last = answer.or(last);
            if Instant::now() >= deadline {
                let log =
                    std::fs::read_to_string(self.data_dir.join("node.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "timed out after {timeout:?} waiting for {} to serve {needle:?} at {host}{path}\n\
                     last answer: {last:?}\nstatus: {}\nlog tail ({}):\n{}",
                    self.http,
                    self.status().await.unwrap_or_default(),
                    self.data_dir.join("node.log").display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A test cannot run here because of `reason`: print why and skip it
/// (`false`), or fail under `CANOPY_REQUIRE_ALL=1` (CI), where nothing may
/// be skipped.
#[allow(
    clippy::print_stderr,
    reason = "a skipped test says why where the test runner shows it"
)]
pub fn skip(reason: &str) -> bool {
    if std::env::var("CANOPY_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{reason} (CANOPY_REQUIRE_ALL=1 forbids skipping)");
    }
    eprintln!("skipped: {reason}");
    false
}

/// `http://host/git/` with `token` as HTTP Basic password (the node's own
/// helper, so the tests build URLs the way the dream does).
pub use canopy_node::auth::git_base_with_token as with_token;

/// One `canopy node --config FILE` process (its output discarded), killed
/// when dropped; started once its `node.json` is written.
pub struct NodeProcess {
    child: Child,
    data_dir: PathBuf,
    /// `DATA_DIR/node.json`: `id`, `http`, `admin`, `git_base`, ….
    pub facts: Value,
}

impl NodeProcess {
    /// Start a node from `config`, whose `data_dir` is `data_dir`.
    pub async fn start(config: &Path, data_dir: &Path) -> NodeProcess {
        Self::start_with(config, data_dir, |_| {}).await
    }

    /// Like [`NodeProcess::start`], with `configure` applied to the command
    /// first (say, its environment).
    pub async fn start_with(
        config: &Path,
        data_dir: &Path,
        configure: impl FnOnce(&mut Command),
    ) -> NodeProcess {
        let mut command = Command::new(canopy_bin());
        command
            .args(["node", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        configure(&mut command);
        let child = command.spawn().expect("canopy node starts");
        let facts = wait_for("the node to be ready", Duration::from_secs(60), || async {
            let text = std::fs::read_to_string(data_dir.join("node.json")).ok()?;
            serde_json::from_str::<Value>(&text).ok()
        })
        .await;
        NodeProcess {
            child,
            data_dir: data_dir.to_owned(),
            facts,
        }
    }

    /// Start a node whose data directory is `dir/data`, from a config
    /// file `dir/node.yaml` with `extra` (whole YAML sections, like
    /// `"gc:\n  interval: 1s\n"`) after the basic settings.
    pub async fn start_in(dir: &Path, extra: &str) -> NodeProcess {
        Self::start_in_with(dir, extra, |_| {}).await
    }

    /// Like [`NodeProcess::start_in`], with `configure` applied to the
    /// command first.
    pub async fn start_in_with(
        dir: &Path,
        extra: &str,
        configure: impl FnOnce(&mut Command),
    ) -> NodeProcess {
        let data = dir.join("data");
        let config = dir.join("node.yaml");
        std::fs::write(
            &config,
            format!(
                "data_dir: {}\nhttp: 127.0.0.1:0\nadmin: 127.0.0.1:0\n{extra}",
                data.display()
            ),
        )
        .expect("the node config is written");
        Self::start_with(&config, &data, configure).await
    }

    /// The Git remote of `project` on this node, with its first admin token.
    pub fn remote(&self, project: &str) -> String {
        with_token(&self.fact("git_base"), &self.admin_token()) + project + ".git"
    }

    /// `project`@`branch`'s live commit, as the node's status says.
    pub async fn live_commit(&self, project: &str, branch: &str) -> Option<String> {
        let status = status_json(&self.fact("admin"), &self.admin_token()).await?;
        status["deployments"]
            .as_array()?
            .iter()
            .find(|d| d["project"] == project && d["branch"] == branch)
            .and_then(|d| d["live_commit"].as_str().map(str::to_owned))
    }

    /// Wait until `commit` is `project`@`branch`'s live commit.
    pub async fn wait_live(&self, project: &str, branch: &str, commit: &str) {
        wait_for(
            &format!("{project}@{branch} {commit} to go live"),
            Duration::from_secs(60),
            || async { (self.live_commit(project, branch).await? == commit).then_some(()) },
        )
        .await;
    }

    /// A `node.json` fact, like `admin`.
    pub fn fact(&self, name: &str) -> String {
        self.facts[name]
            .as_str()
            .unwrap_or_else(|| panic!("node.json has no {name}: {}", self.facts))
            .to_owned()
    }

    /// The node's first admin token (`DATA_DIR/admin-token`).
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin-token"))
            .expect("the node wrote its first admin token")
            .trim()
            .to_owned()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A shared HTTP client (HTTP/1.1; no proxy).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client builds")
}

/// `GET <admin>/api/status` with `token`, as JSON; `None` while the node
/// does not answer with it.
pub async fn status_json(admin: &str, token: &str) -> Option<serde_json::Value> {
    client()
        .get(format!("{admin}/api/status"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// A Git work tree to build projects in and push from.
pub struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Result<Project> {
        let project = Project {
            dir: tempfile::tempdir()?,
        };
        project.git(&["init", "--quiet", "--initial-branch=main"])?;
        Ok(project)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write a file (creating directories).
    pub fn write(&self, path: &str, contents: impl AsRef<[u8]>) -> &Self {
        let full = self.dir.path().join(path);
        std::fs::create_dir_all(full.parent().expect("file has a parent")).expect("mkdir");
        std::fs::write(full, contents).expect("write");
        self
    }

    pub fn remove(&self, path: &str) -> &Self {
        std::fs::remove_file(self.dir.path().join(path)).expect("remove");
        self
    }

    /// Run git in the work tree with an isolated configuration.
    pub fn git(&self, args: &[&str]) -> Result<String> {
        let output = Command::new("git")
            .args([
                "-c",
                "user.name=Canopy Test",
                "-c",
                "user.email=test@canopy.invalid",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(self.dir.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            // It would override a test's `-c http.sslCAInfo`.
            .env_remove("GIT_SSL_CAINFO")
            .output()
            .context("running git")?;
        if !output.status.success() {
            bail!(
                "git {args:?} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr))
    }

    /// Commit everything and return the commit id.
    pub fn commit(&self, message: &str) -> Result<String> {
        self.git(&["add", "-A"])?;
        self.git(&["commit", "--quiet", "--allow-empty", "-m", message])?;
        Ok(self.git(&["rev-parse", "HEAD"])?.trim().to_owned())
    }

    /// Switch to (creating if needed) `branch`.
    pub fn checkout(&self, branch: &str) -> Result<()> {
        if self.git(&["checkout", "--quiet", branch]).is_err() {
            self.git(&["checkout", "--quiet", "-b", branch])?;
        }
        Ok(())
    }

    /// Push the current HEAD to `branch` of `remote` (forced, like a deploy).
    pub fn push(&self, remote: &str, branch: &str) -> Result<String> {
        self.git(&[
            "push",
            "--force",
            remote,
            &format!("HEAD:refs/heads/{branch}"),
        ])
    }
}

/// The marker the test guest embeds, patched per version.
pub const VERSION_MARKER: &[u8; 16] = b"CANOPY-VERSION-0";

/// The test guest (`tests/guests/testfn`) with its version marker replaced by
/// `version` (at most 16 bytes, padded with `-`): a distinct, valid component
/// per version, without a rebuild.
pub fn testfn(version: &str) -> Vec<u8> {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    let wasm = WASM.get_or_init(|| {
        let path = Guest::TESTFN.build().unwrap_or_else(|e| panic!("{e}"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    });
    assert!(
        version.len() <= 16,
        "version {version:?} is longer than the 16-byte marker"
    );
    let mut replacement = [b'-'; 16];
    replacement[..version.len()].copy_from_slice(version.as_bytes());
    let at = wasm
        .windows(16)
        .position(|w| w == VERSION_MARKER)
        .expect("the test guest embeds its version marker");
    let mut patched = wasm.clone();
    patched[at..at + 16].copy_from_slice(&replacement);
    patched
}
