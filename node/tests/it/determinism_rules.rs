//! The determinism rules that clippy cannot check, enforced on the source.
//!
//! Node code takes time and randomness from its environment (`env::Clock`,
//! `env::Rng`), never from the operating system, so the simulator can replay
//! a run from a seed. Clippy enforces what is a call anywhere in the node —
//! the OS clock, OS randomness, OS threads, tokio's blocking pool — as
//! `disallowed-methods` (`clippy.toml`). What is left here is what it
//! cannot see: rules for some modules only (its lists are crate-wide), and
//! a `select!`'s `biased;` (inside a macro's input).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Directories of protocol code the simulator runs.
const SIMULATED: &[&str] = &["cluster", "deploy", "git", "runtime"];

/// tokio watches with one waiter at most: the admitted set that
/// `cluster::member` hands to the net (libp2p's driver in production,
/// `canopy-sim`'s `SimNet` alone in the simulator), so no wake-up order is
/// drawn.
const WATCH_ALLOWED: &[&str] = &["cluster/member.rs"];

/// An unbiased `tokio::select!` picks its first branch with tokio's
/// OS-seeded RNG, and `tokio::sync::watch` wakes its receivers in an order
/// drawn from it: in code the simulator runs, every select is `biased;` and
/// watches are `cluster::watch`.
#[test]
fn simulated_code_uses_biased_selects() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for dir in SIMULATED {
        let mut files = Vec::new();
        rust_files(&src.join(dir), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (number, line) in lines.iter().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                let tokio_watch = code.contains("tokio::sync::watch")
                    || (code.contains("use tokio::sync::{") && code.contains("watch"));
                let relative_path = file.strip_prefix(&src).unwrap().display().to_string();
                if tokio_watch && !WATCH_ALLOWED.contains(&relative_path.as_str()) {
                    let relative = &relative_path;
                    violations.push(format!(
                        "node/src/{relative}:{}: tokio's watch wakes in a random order; use cluster::watch",
                        number + 1
                    ));
                }
                if code.contains("select! {") {
                    let next = lines.get(number + 1).map(|l| l.trim()).unwrap_or_default();
                    if next != "biased;" {
                        let relative = file.strip_prefix(&src).unwrap().display();
                        violations.push(format!("node/src/{relative}:{}", number + 1));
                    }
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "tokio randomness in simulated code (unbiased select! or tokio watch):\n{}",
        violations.join("\n")
    );
}

/// Modules whose writes the node relies on surviving a crash: they write
/// through the node's `env::Disk`, so the simulator's disk can lose what
/// they did not sync.
const DURABLE: &[&str] = &[
    "store",
    "durable.rs",
    "deploy/state.rs",
    "cluster/member.rs",
];

/// Direct filesystem writes that would bypass the disk seam.
const DIRECT_WRITES: &[&str] = &[
    "fs::write(",
    "fs::rename(",
    "fs::remove_file(",
    "File::create(",
    "File::options()",
    "OpenOptions",
    "sync_all(",
    "sync_data(",
    "tempfile::",
    "NamedTempFile",
];

#[test]
fn durable_modules_write_through_the_disk_seam() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for module in DURABLE {
        let path = src.join(module);
        let mut files = Vec::new();
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else {
            files.push(path);
        }
        assert!(!files.is_empty(), "found {module}");
        for file in files {
            // Unit tests may set up and corrupt files directly.
            if file.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let relative = file.strip_prefix(&src).unwrap().display().to_string();
            let text = std::fs::read_to_string(&file).unwrap();
            for (number, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("#[cfg(test)]") {
                    break;
                }
                let code = line.split("//").next().unwrap_or_default();
                for pattern in DIRECT_WRITES {
                    if code.contains(pattern) {
                        violations.push(format!("node/src/{relative}:{}: {pattern}", number + 1));
                    }
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "durable modules write through env::Disk (a simulated crash must be able to lose what they did not sync):\n{}",
        violations.join("\n")
    );
}
