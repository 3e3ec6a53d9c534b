//! Running a function's `build.command` on the checked-out tree.
//!
//! A build is a stranger's shell command on this node, so it runs in the
//! [`sandbox`] (no network, no view of the node's data), under resource
//! limits (CPU time, memory, processes, file size), with its output read
//! through a bounded tail, and with a timeout after which its whole process
//! tree is gone: the outer process leads its own process group and the
//! sandbox's PID namespace dies with it.

mod sandbox;

pub use sandbox::{BUILD_UID, CHECKOUT, Confinement, Sandbox, SandboxMode, hand_to_build_user};

use std::io;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// How many lines of a failed build's output its error shows (the tail).
const OUTPUT_TAIL_LINES: usize = 20;
/// How much of each of a build's output streams is kept (the tail); the rest
/// is read and dropped, so a build that prints without end costs no memory.
pub const OUTPUT_KEPT_BYTES: usize = 64 * 1024;
/// A build process's data (heap and private mappings), `RLIMIT_DATA`.
pub const MEMORY_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Processes and threads a build may run at once (`RLIMIT_NPROC`, counted
/// for [`BUILD_UID`]; beside the node's own threads when the node is not
/// root).
pub const PROCESSES: u64 = 256;
/// The largest file a build may write, `RLIMIT_FSIZE`.
pub const FILE_BYTES: u64 = 1024 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("could not start `sh -c {command:?}` in {dir}: {source}")]
    Spawn {
        command: String,
        dir: String,
        source: io::Error,
    },
    #[error("build command `{command}` exited with {status}; last output:\n{output}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error(
        "build command `{command}` did not finish within {timeout_s}s and was killed with every process it started; raise functions.NAME.build.timeout or speed the build up"
    )]
    TimedOut { command: String, timeout_s: u64 },
    #[error(
        "builds on this node must run in a sandbox, and none can be set up: {reason}; or commit the built component and name it with `wasm:`"
    )]
    NoSandbox { reason: String },
    #[error("cannot prepare the checkout {dir} for the build: {source}")]
    Prepare { dir: String, source: io::Error },
}

/// One build: `command` run in `dir` (relative) of the checkout at
/// `checkout`, with `env` declared in canopy.yaml.
#[derive(Clone, Copy, Debug)]
pub struct BuildSpec<'a> {
    pub command: &'a str,
    pub checkout: &'a Path,
    pub dir: &'a str,
    pub timeout: Duration,
    pub env: &'a [(String, String)],
}

/// Run `spec` confined by `sandbox`, killing it and every process it started
/// after its timeout.
pub async fn run(sandbox: &Sandbox, spec: BuildSpec<'_>) -> Result<(), BuildError> {
    let work_dir = spec.checkout.join(spec.dir);
    let spawn_error = |source| BuildError::Spawn {
        command: spec.command.to_owned(),
        dir: work_dir.display().to_string(),
        source,
    };
    let confinement = sandbox
        .confinement()
        .await
        .map_err(|reason| BuildError::NoSandbox { reason })?;
    let (mut command, drop_to) = match &confinement {
        Confinement::Sandboxed { bwrap } => {
            hand_to_build_user(spec.checkout).map_err(|source| BuildError::Prepare {
                dir: spec.checkout.display().to_string(),
                source,
            })?;
            let command = sandbox.command(
                bwrap,
                spec.checkout,
                Path::new(spec.dir),
                spec.command,
                spec.env,
            );
            (command, sandbox::is_root().then_some(BUILD_UID))
        }
        Confinement::Unsandboxed { .. } => (unsandboxed(spec, &work_dir), None),
    };
    let limits = Limits::for_build(spec.timeout, drop_to.is_some());
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (setrlimit, setgroups, setgid,
    // setuid); it allocates nothing.
    unsafe {
        command.pre_exec(move || limits.apply(drop_to));
    }
    let mut child = command.spawn().map_err(spawn_error)?;
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let collect = async {
        let (out, err, status) = tokio::join!(
            read_tail(stdout, OUTPUT_KEPT_BYTES),
            read_tail(stderr, OUTPUT_KEPT_BYTES),
            child.wait()
        );
        let mut output = out;
        output.extend_from_slice(&err);
        (status, output)
    };
    let outcome = tokio::time::timeout(spec.timeout, collect).await;
    match outcome {
        Ok((Ok(status), _)) if status.success() => Ok(()),
        Ok((Ok(status), output)) => Err(BuildError::Failed {
            command: spec.command.to_owned(),
            status,
            output: tail(&String::from_utf8_lossy(&output), OUTPUT_TAIL_LINES),
        }),
        Ok((Err(source), _)) => Err(spawn_error(source)),
        Err(_elapsed) => {
            if let Some(pid) = pid {
                kill_process_group(pid);
            }
            // Reap it; the sandbox's processes die with their namespace.
            let _ = child.wait().await;
            Err(BuildError::TimedOut {
                command: spec.command.to_owned(),
                timeout_s: spec.timeout.as_secs(),
            })
        }
    }
}

/// `sh -c COMMAND` with no sandbox (only where [`SandboxMode::Preferred`]
/// allows it): still an emptied environment, the limits and the timeout.
fn unsandboxed(spec: BuildSpec<'_>, work_dir: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(spec.command)
        .current_dir(work_dir)
        .env_clear();
    for name in ["PATH", "HOME", "RUSTUP_HOME", "CARGO_HOME", "LANG"] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command.envs(spec.env.iter().map(|(n, v)| (n, v)));
    command
}

/// The resource limits of one build, applied in the child before exec.
#[derive(Clone, Copy, Debug)]
struct Limits {
    cpu_s: u64,
    memory: u64,
    processes: u64,
    file: u64,
}

impl Limits {
    fn for_build(timeout: Duration, own_uid: bool) -> Self {
        // Without a uid of its own the process limit counts the node's
        // threads too: leave room for them.
        let processes = if own_uid {
            PROCESSES
        } else {
            PROCESSES + node_threads() + 64
        };
        Self {
            cpu_s: timeout.as_secs().max(1),
            memory: MEMORY_BYTES,
            processes,
            file: FILE_BYTES,
        }
    }

    /// Set the limits, then drop to `uid` (only when root).
    fn apply(self, drop_to: Option<u32>) -> io::Result<()> {
        set_limit(libc::RLIMIT_CPU, self.cpu_s)?;
        set_limit(libc::RLIMIT_DATA, self.memory)?;
        set_limit(libc::RLIMIT_NPROC, self.processes)?;
        set_limit(libc::RLIMIT_FSIZE, self.file)?;
        if let Some(uid) = drop_to {
            // SAFETY: plain syscalls on this (child) process; no memory is
            // shared with the parent after fork.
            unsafe {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(uid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

/// What `setrlimit` takes as its resource: glibc has a type of its own.
#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

fn set_limit(resource: Resource, value: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Threads of this process (the node), from /proc.
fn node_threads() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// Read `reader` to its end, keeping only its last `keep` bytes.
async fn read_tail(mut reader: impl AsyncRead + Unpin, keep: usize) -> Vec<u8> {
    let mut kept = Vec::with_capacity(keep.min(8192));
    let mut chunk = vec![0u8; 8192];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                kept.extend_from_slice(&chunk[..n]);
                if kept.len() > keep {
                    kept.drain(..kept.len() - keep);
                }
            }
        }
    }
}

fn kill_process_group(pid: u32) {
    // The child leads its own group (process_group(0)), so -pid names it.
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: kill(2) with a negative pid signals a process group; no memory
    // is touched.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

#[cfg(test)]
mod tests;
