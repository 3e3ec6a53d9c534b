//! The box a build command runs in: bubblewrap (`bwrap`, the sandbox of
//! Flatpak and of GNOME's thumbnailers) around `sh -c COMMAND`.
//!
//! Inside, the command sees:
//!
//! - no network: a network namespace of its own, with only loopback;
//! - a read-only view of the system (`/usr`, `/bin`, `/lib*`, `/nix/store`,
//!   `/opt`, the toolchains of the node's user) and of the few files in
//!   `/etc` programs need (users, hosts, certificates, the loader cache) —
//!   not the rest of `/etc`, where a node's config may sit;
//! - its checkout, writable, at [`CHECKOUT`], and a private `/tmp` and
//!   `$HOME`; nothing else of the node: not its data directory, `node.key`,
//!   other projects or their checkouts;
//! - its own PID, IPC, UTS and user namespaces: it cannot see or signal the
//!   node's processes, and when the sandbox's first process dies the kernel
//!   kills every process left in it;
//! - no capabilities, and when the node runs as root, the unprivileged
//!   [`BUILD_UID`] outside as well (so the per-user process limit counts
//!   only builds, and root-only files stay closed even if they were
//!   visible).
//!
//! Why bubblewrap: it is small, audited and packaged everywhere (Debian,
//! NixOS), it needs no daemon and no setuid bit where unprivileged user
//! namespaces are allowed, and it does exactly the mount and namespace set-up
//! above from a command line — the node keeps no unsafe namespace code of its
//! own. In-process crates (hakoniwa) would spare the binary but bring their
//! own mount code and, for seccomp, a C library.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::sync::OnceCell;

/// Where the checkout is mounted inside the sandbox.
pub const CHECKOUT: &str = "/src";
/// The build's home inside the sandbox (on its private root).
pub const HOME: &str = "/home/build";
/// The uid (and gid) builds run as when the node runs as root: `nobody`.
pub const BUILD_UID: u32 = 65534;
/// Size of the build's private `/tmp`.
pub const TMP_BYTES: u64 = 512 * 1024 * 1024;

/// System directories a build sees read-only (when they exist).
const SYSTEM_DIRS: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/opt",
    "/nix/store",
    "/run/current-system",
];

/// The files and directories of `/etc` programs need to run.
const ETC_ENTRIES: &[&str] = &[
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/localtime",
    "/etc/os-release",
    "/etc/static",
];

/// Whether builds must be sandboxed (`build_sandbox:` in a node config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxMode {
    /// No sandbox, no build: `canopy node` (a prebuilt `wasm:` still
    /// deploys).
    Required,
    /// Sandbox when one can be set up, else build anyway with a warning:
    /// `canopy dream` on a laptop without bubblewrap.
    Preferred,
}

/// How builds on this node are confined; checks once whether the sandbox
/// works here.
#[derive(Debug)]
pub struct Sandbox {
    mode: SandboxMode,
    data_dir: PathBuf,
    /// `Ok(bwrap)`, or why no sandbox can be set up.
    probe: OnceCell<Result<PathBuf, String>>,
    /// Building without a sandbox is said once, loudly.
    warned: std::sync::Once,
}

/// What a build runs in: the sandbox, or (only in [`SandboxMode::Preferred`])
/// nothing.
#[derive(Clone, Debug)]
pub enum Confinement {
    Sandboxed { bwrap: PathBuf },
    Unsandboxed { reason: String },
}

impl Sandbox {
    /// Builds of a node whose data lives in `data_dir` (kept out of sight).
    pub fn new(mode: SandboxMode, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            mode,
            data_dir: data_dir.into(),
            probe: OnceCell::new(),
            warned: std::sync::Once::new(),
        }
    }

    /// Act as if no sandbox can be set up here, for `reason`.
    #[cfg(test)]
    pub fn force_unavailable(&self, reason: &str) {
        let _ = self.probe.set(Err(reason.to_owned()));
    }

    pub fn mode(&self) -> SandboxMode {
        self.mode
    }

    /// What the next build runs in; `Err(reason)` when a sandbox is required
    /// and none can be set up.
    pub async fn confinement(&self) -> Result<Confinement, String> {
        let probe = self.probe.get_or_init(|| self.probe()).await;
        match (probe, self.mode) {
            (Ok(bwrap), _) => Ok(Confinement::Sandboxed {
                bwrap: bwrap.clone(),
            }),
            (Err(reason), SandboxMode::Required) => Err(reason.clone()),
            (Err(reason), SandboxMode::Preferred) => {
                self.warned.call_once(|| {
                    tracing::warn!(
                        "builds run WITHOUT a sandbox: they can read this machine's files and reach its network ({reason})"
                    )
                });
                Ok(Confinement::Unsandboxed {
                    reason: reason.clone(),
                })
            }
        }
    }

    /// Run `true` in the sandbox exactly as a build would run.
    async fn probe(&self) -> Result<PathBuf, String> {
        let bwrap = find_on_path("bwrap").ok_or_else(|| {
            "bubblewrap (`bwrap`) is not installed; install it (Debian: `apt-get install bubblewrap`)"
                .to_owned()
        })?;
        let dir = tempfile::Builder::new()
            .prefix("sandbox-probe-")
            .tempdir_in(self.data_dir.join("work"))
            .or_else(|_| tempfile::tempdir())
            .map_err(|e| format!("cannot create a directory to try the sandbox in: {e}"))?;
        hand_to_build_user(dir.path()).map_err(|e| {
            format!(
                "cannot hand {} to the build user: {e}",
                dir.path().display()
            )
        })?;
        let mut command = self.command(&bwrap, dir.path(), Path::new("."), "true", &[]);
        let output = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", bwrap.display()))?;
        if output.status.success() {
            tracing::debug!(bwrap = %bwrap.display(), "builds run in a sandbox");
            Ok(bwrap)
        } else {
            Err(format!(
                "{} cannot set up a sandbox here ({}: {}); unprivileged user namespaces may be off (sysctl kernel.unprivileged_userns_clone=1)",
                bwrap.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// `bwrap … -- sh -c COMMAND` running in `dir` of the checkout at
    /// `checkout`, with only `env` (and `PATH`, `HOME`, the toolchains'
    /// homes) in its environment.
    pub fn command(
        &self,
        bwrap: &Path,
        checkout: &Path,
        dir: &Path,
        command: &str,
        env: &[(String, String)],
    ) -> tokio::process::Command {
        let mut args: Vec<String> = [
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--cap-drop",
            "ALL",
        ]
        .map(str::to_owned)
        .into();
        let exposed = exposed_paths();
        for path in &exposed {
            match std::fs::read_link(path) {
                // Merged-/usr systems: /bin -> usr/bin. Keep the link.
                Ok(target) => args.extend([
                    "--symlink".into(),
                    target.display().to_string(),
                    path.display().to_string(),
                ]),
                Err(_) => args.extend([
                    "--ro-bind".into(),
                    path.display().to_string(),
                    path.display().to_string(),
                ]),
            }
        }
        // The data directory stays out of sight even if it lies under an
        // exposed path (say /opt/canopy).
        if exposed.iter().any(|p| self.data_dir.starts_with(p)) {
            args.extend(["--tmpfs".into(), self.data_dir.display().to_string()]);
        }
        args.extend(
            [
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--size",
                &TMP_BYTES.to_string(),
                "--tmpfs",
                "/tmp",
                "--dir",
                HOME,
                "--bind",
                &checkout.display().to_string(),
                CHECKOUT,
                "--chdir",
                &Path::new(CHECKOUT).join(dir).display().to_string(),
            ]
            .map(str::to_owned),
        );
        for (name, value) in sandbox_env(env) {
            args.extend(["--setenv".into(), name, value]);
        }
        args.extend(["--".into(), "sh".into(), "-c".into(), command.to_owned()]);
        let mut cmd = tokio::process::Command::new(bwrap);
        cmd.args(args).env_clear();
        cmd
    }
}

/// Make `dir` (recursively) the build user's when the node is root, so the
/// build can write its checkout; a no-op otherwise.
pub fn hand_to_build_user(dir: &Path) -> std::io::Result<()> {
    if !is_root() {
        return Ok(());
    }
    chown_tree(dir, BUILD_UID)
}

fn chown_tree(path: &Path, uid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid)?;
        }
    }
    Ok(())
}

/// Whether this process runs as root (builds then drop to [`BUILD_UID`]).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// The toolchain homes of the node's user (rustup, cargo's binaries):
/// exposed read-only so `cargo build` works offline in the sandbox.
fn toolchain_dirs() -> Vec<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let rustup = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".rustup")));
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".cargo")))
        .map(|c| c.join("bin"));
    [rustup, cargo_bin]
        .into_iter()
        .flatten()
        .filter(|p| p.is_dir() && (!is_root() || open_to_others(p)))
        .collect()
}

/// Whether a user other than the owner can reach and read `dir`: a build
/// that dropped to [`BUILD_UID`] could not use a toolchain under a closed
/// `/root`.
fn open_to_others(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode())
            .unwrap_or(0)
    };
    mode(dir) & 0o005 == 0o005 && dir.ancestors().skip(1).all(|a| mode(a) & 0o001 != 0)
}

/// Every host path a build sees read-only, that exists here.
fn exposed_paths() -> Vec<PathBuf> {
    SYSTEM_DIRS
        .iter()
        .chain(ETC_ENTRIES)
        .map(PathBuf::from)
        .chain(toolchain_dirs())
        .filter(|p| p.symlink_metadata().is_ok())
        .collect()
}

/// The whole environment of a sandboxed build: the node's `PATH`, a private
/// `HOME` and `TMPDIR`, rustup's home if the node has one, then what
/// `canopy.yaml` declares.
fn sandbox_env(declared: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "PATH".to_owned(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        ("HOME".to_owned(), HOME.to_owned()),
        ("TMPDIR".to_owned(), "/tmp".to_owned()),
        ("CARGO_HOME".to_owned(), format!("{HOME}/.cargo")),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
    ];
    if let Some(rustup) = toolchain_dirs()
        .into_iter()
        .find(|p| p.ends_with(".rustup"))
        .or_else(|| std::env::var_os("RUSTUP_HOME").map(PathBuf::from))
    {
        env.push(("RUSTUP_HOME".to_owned(), rustup.display().to_string()));
    }
    env.extend(declared.iter().cloned());
    env
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_only_path_home_and_what_is_declared() {
        let env = sandbox_env(&[("MODE".into(), "release".into())]);
        let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"PATH") && names.contains(&"HOME") && names.contains(&"MODE"));
        assert!(!names.contains(&"CANOPY_TOKEN"), "{names:?}");
        assert_eq!(env.last().unwrap(), &("MODE".into(), "release".into()));
    }

    #[test]
    fn a_data_dir_under_an_exposed_path_is_masked() {
        let sandbox = Sandbox::new(SandboxMode::Required, "/opt/canopy/data");
        let command = sandbox.command(
            Path::new("/usr/bin/bwrap"),
            Path::new("/tmp/x"),
            Path::new("."),
            "true",
            &[],
        );
        let args: Vec<String> = command
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        if Path::new("/opt").exists() {
            let at = args
                .iter()
                .position(|a| a == "/opt/canopy/data")
                .expect("masked");
            assert_eq!(args[at - 1], "--tmpfs");
        }
        assert!(args.iter().any(|a| a == "--unshare-all"));
        assert!(
            !args.iter().any(|a| a == "/etc"),
            "all of /etc is never exposed"
        );
    }
}
