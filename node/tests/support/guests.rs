//! Builds the guest crates (WebAssembly components) that tests deploy.
//!
//! Each guest is a standalone crate outside the workspace, built with
//! `cargo build --release --target wasm32-wasip2` into
//! `$CARGO_TARGET_DIR/guests` (or `<workspace>/target/guests`), which
//! cargo keeps between runs, so only the first run pays for the build.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the parent of `node/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("node/ lives inside the workspace")
        .to_path_buf()
}

/// The test function `tests/guests/testfn`, built; returns its `.wasm`.
pub fn testfn() -> PathBuf {
    build(&workspace_root().join("tests/guests/testfn"))
}

/// The guide's example `docs/examples/hello`, built; returns its `.wasm`.
pub fn hello() -> PathBuf {
    build(&workspace_root().join("docs/examples/hello"))
}

/// Build the guest crate in `crate_dir` and return the path of its
/// component. Panics with what to do if the build fails.
pub fn build(crate_dir: &Path) -> PathBuf {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("guests");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--manifest-path")
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer build's flags are for the host, not for the guest.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run cargo to build {}: {error}", crate_dir.display())
        });
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("wasm32-wasip2")
            && stderr.contains("target may not be installed")
            || stderr.contains("can't find crate for `core`")
            || stderr.contains("can't find crate for `std`")
        {
            "the wasm32-wasip2 target is missing: run `rustup target add wasm32-wasip2`"
        } else {
            "if the target is missing, run `rustup target add wasm32-wasip2`"
        };
        panic!(
            "building the guest {} failed ({hint}):\n{stderr}",
            crate_dir.display()
        );
    }
    let name = crate_dir
        .file_name()
        .expect("a crate directory has a name")
        .to_string_lossy()
        .replace('-', "_");
    let wasm = target_dir
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        wasm.exists(),
        "cargo built {} but {} is missing",
        crate_dir.display(),
        wasm.display()
    );
    wasm
}
