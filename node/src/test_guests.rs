//! Building this repository's guest crates — the WebAssembly components
//! that tests and the simulator deploy — from source.
//!
//! The node never calls this. It lives here because everything that deploys
//! a guest depends on `canopy-node` (its integration tests, `canopy-sim` and
//! `canopy-tests`), and no smaller crate is shared by all three.
//!
//! A guest is a standalone crate outside the workspace, built with
//! `cargo build --release --locked --target wasm32-wasip2` into
//! `$CARGO_TARGET_DIR/guests` (or `<workspace>/target/guests`). Cargo keeps
//! the build there between runs, so only the first run pays for it, and
//! cargo's own lock on that directory orders the builds of concurrent
//! processes; within a process each guest is built once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};

/// The target the guests are built for.
pub const TARGET: &str = "wasm32-wasip2";

/// A guest crate of this repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Guest {
    /// The crate's directory, relative to the workspace root.
    dir: &'static str,
    /// The crate's name: its component is `<name>.wasm`.
    name: &'static str,
}

impl Guest {
    /// `tests/guests/testfn`: the test function every suite deploys.
    pub const TESTFN: Guest = Guest {
        dir: "tests/guests/testfn",
        name: "testfn",
    };

    /// `docs/examples/hello`: the getting-started guide's example.
    pub const HELLO: Guest = Guest {
        dir: "docs/examples/hello",
        name: "hello",
    };

    /// The crate's directory.
    pub fn crate_dir(self) -> PathBuf {
        workspace_root().join(self.dir)
    }

    /// Where [`Guest::build`] puts the component (it may not be there yet).
    pub fn wasm_path(self) -> PathBuf {
        guests_target_dir()
            .join(TARGET)
            .join("release")
            .join(format!("{}.wasm", self.name))
    }

    /// Build the guest (a no-op when cargo finds it fresh; once per process)
    /// and return the path of its component.
    pub fn build(self) -> Result<PathBuf, GuestError> {
        // Held across the build: a second caller waits for the first
        // build instead of starting cargo beside it.
        static BUILT: Mutex<BTreeMap<Guest, PathBuf>> = Mutex::new(BTreeMap::new());
        let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(wasm) = built.get(&self) {
            return Ok(wasm.clone());
        }
        let wasm = self.run_cargo()?;
        built.insert(self, wasm.clone());
        Ok(wasm)
    }

    fn run_cargo(self) -> Result<PathBuf, GuestError> {
        let crate_dir = self.crate_dir();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = Command::new(cargo)
            .args(["build", "--release", "--locked", "--target", TARGET])
            .arg("--manifest-path")
            .arg(crate_dir.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(guests_target_dir())
            // The outer build's flags are for the host, not for the guest.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .map_err(|source| GuestError::Cargo {
                crate_dir: crate_dir.clone(),
                source,
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            return Err(GuestError::Build {
                hint: hint(&stderr),
                crate_dir,
                stderr,
            });
        }
        let wasm = self.wasm_path();
        if !wasm.exists() {
            return Err(GuestError::Missing { crate_dir, wasm });
        }
        Ok(wasm)
    }
}

/// A guest could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("cannot run cargo to build {}: {source}", crate_dir.display())]
    Cargo {
        crate_dir: PathBuf,
        source: std::io::Error,
    },
    #[error("building the guest {} failed ({hint}):\n{stderr}", crate_dir.display())]
    Build {
        crate_dir: PathBuf,
        /// What to do about it.
        hint: &'static str,
        /// Cargo's output.
        stderr: String,
    },
    #[error("cargo built {} but {} is missing", crate_dir.display(), wasm.display())]
    Missing { crate_dir: PathBuf, wasm: PathBuf },
}

/// What a failed guest build most likely needs.
fn hint(stderr: &str) -> &'static str {
    let target_missing = (stderr.contains(TARGET)
        && stderr.contains("target may not be installed"))
        || stderr.contains("can't find crate for `core`")
        || stderr.contains("can't find crate for `std`");
    if target_missing {
        "the wasm32-wasip2 target is missing: run `rustup target add wasm32-wasip2`"
    } else {
        "if the target is missing, run `rustup target add wasm32-wasip2`"
    }
}

/// The workspace root: that of the checkout `cargo` runs in.
///
/// From `CARGO_MANIFEST_DIR` at run time (cargo sets it for the processes
/// of `cargo test`, `cargo run` and `cargo bench`; every workspace member's
/// parent is the root), else where this crate was compiled: checkouts (git
/// worktrees) sharing one `CARGO_TARGET_DIR` share this crate's compiled
/// artifact, and the compile-time path is the checkout that built it first.
fn workspace_root() -> PathBuf {
    let member = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    member
        .parent()
        .map_or_else(|| member.clone(), Path::to_path_buf)
}

/// `$CARGO_TARGET_DIR/guests`, else `<workspace>/target/guests`.
fn guests_target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("guests")
}
