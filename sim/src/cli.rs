//! The `canopy-sim` command line.
//!
//! - `canopy-sim --seed N [--nodes K] [--steps S]` — one run; ends with
//!   `seed=N trace=<hash> violations=<count>`; on a violation prints each
//!   one, the replay command and the trace file, and exits 1.
//! - `canopy-sim --seeds A..B` — seeds A (inclusive) to B (exclusive) in
//!   parallel on every core (`--jobs`), one line per seed, then a summary.
//! - `canopy-sim --soak [--duration SECS]` — seeds from `--from` on, in
//!   parallel, until the time is up.
//!
//! `--bug NAME` switches a known bug on in the nodes (see
//! `canopy_node::bugs`): the run should then find a violation.
//!
//! `--check-determinism` runs every seed a second time, after whatever ran
//! on the other threads in between, and counts a different trace as a
//! `determinism` violation naming the first line that differs.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the command line's output is its job"
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use canopy_node::bugs::Bug;
use clap::Parser;

use crate::harness::{RunConfig, RunResult, run};
use crate::invariants::Violation;

#[derive(Debug, Parser)]
#[command(
    name = "canopy-sim",
    version,
    about = "Many Canopy nodes in one deterministic simulation, replayable from a seed"
)]
pub struct Args {
    /// Run this one seed.
    #[arg(long, conflicts_with_all = ["seeds", "soak"])]
    pub seed: Option<u64>,
    /// Run seeds A..B (B excluded) in parallel.
    #[arg(long, value_name = "A..B", conflicts_with = "soak")]
    pub seeds: Option<String>,
    /// Run seeds from --from on until --duration is up.
    #[arg(long)]
    pub soak: bool,
    /// First seed of a soak.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// How long a soak runs, in seconds of wall-clock time.
    #[arg(long, default_value_t = 600)]
    pub duration: u64,
    /// Nodes at the start of a run (one more may join).
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Length of the active phase (workload and faults) in simulated seconds.
    #[arg(long, default_value_t = 60)]
    pub steps: u64,
    /// Switch on a known bug: skip-anti-entropy, accept-unverified-blob,
    /// apply-stale-deployment, skip-fsync, exceed-fetch-limit,
    /// trust-any-signer, ignore-revocations, skip-gc-grace. Repeatable.
    #[arg(long = "bug", value_name = "NAME")]
    pub bugs: Vec<String>,
    /// Parallel runs (default: every core).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Where traces of failing runs are written.
    #[arg(long, default_value = "sim-traces")]
    pub trace_dir: PathBuf,
    /// Write the trace of every run, not only of failing ones.
    #[arg(long)]
    pub write_trace: bool,
    /// Print the trace of a single run on stdout.
    #[arg(long)]
    pub print_trace: bool,
    /// Run every seed twice and report a seed whose two traces differ (a
    /// `determinism` violation; both traces are written).
    #[arg(long)]
    pub check_determinism: bool,
}

/// Parse `A..B`.
pub fn parse_range(text: &str) -> anyhow::Result<(u64, u64)> {
    let (a, b) = text
        .split_once("..")
        .with_context(|| format!("--seeds {text:?}: expected A..B, e.g. 0..200"))?;
    let a: u64 = a
        .trim()
        .parse()
        .with_context(|| format!("--seeds: bad start {a:?}"))?;
    let b: u64 = b
        .trim()
        .parse()
        .with_context(|| format!("--seeds: bad end {b:?}"))?;
    if b <= a {
        bail!("--seeds {text}: the range is empty (B must be greater than A)");
    }
    Ok((a, b))
}

fn bugs(names: &[String]) -> anyhow::Result<Vec<Bug>> {
    names
        .iter()
        .map(|n| {
            Bug::from_name(n).with_context(|| {
                let known: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
                format!("unknown bug {n:?}; known: {}", known.join(", "))
            })
        })
        .collect()
}

/// Write a run's trace; returns the file.
pub fn write_trace(dir: &Path, result: &RunResult) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(format!("seed-{}.trace", result.config.seed));
    let mut text = result.trace.text();
    for v in &result.violations {
        text.push_str(&format!("# {v}\n"));
    }
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// Run `config` as asked: once, or twice with the traces compared.
fn run_checked(args: &Args, config: &RunConfig) -> anyhow::Result<RunResult> {
    let mut result = run(config);
    if args.check_determinism {
        let again = run(config);
        if let Some(violation) = determinism_violation(&result, &again) {
            let path = write_trace(&args.trace_dir.join("rerun"), &again)?;
            result.violations.push(Violation {
                message: format!(
                    "{} (the rerun's trace: {})",
                    violation.message,
                    path.display()
                ),
                ..violation
            });
        }
    }
    Ok(result)
}

/// The first difference between two runs of one seed, if any.
pub fn determinism_violation(first: &RunResult, second: &RunResult) -> Option<Violation> {
    if first.hash == second.hash {
        return None;
    }
    let (a, b) = (&first.trace.entries, &second.trace.entries);
    let at = a
        .iter()
        .zip(b)
        .position(|(x, y)| x.to_string() != y.to_string());
    let line = |entries: &[crate::trace::Entry], i: usize| {
        entries
            .get(i)
            .map_or("(end of trace)".to_string(), |e| e.to_string())
    };
    let i = at.unwrap_or(a.len().min(b.len()));
    Some(Violation {
        invariant: "determinism",
        at_ms: a.get(i).or(b.get(i)).map_or(0, |e| e.at_ms),
        message: format!(
            "the same seed gave two traces ({} then {}); first difference at line {}: {:?} vs {:?}",
            first.hash,
            second.hash,
            i + 1,
            line(a, i),
            line(b, i)
        ),
    })
}

/// Print one run's outcome: violations, replay command and trace file when
/// it failed; always the summary line last.
fn report(args: &Args, result: &RunResult, out: &mut impl Write) -> anyhow::Result<()> {
    if !result.violations.is_empty() || args.write_trace {
        let path = write_trace(&args.trace_dir, result)?;
        if !result.violations.is_empty() {
            for v in &result.violations {
                writeln!(out, "seed={} {v}", result.config.seed)?;
            }
            writeln!(
                out,
                "seed={} replay: {}",
                result.config.seed,
                result.config.replay_command()
            )?;
            writeln!(
                out,
                "seed={} trace written to {}",
                result.config.seed,
                path.display()
            )?;
        }
    }
    writeln!(out, "{}", result.summary_line())?;
    Ok(())
}

/// Run on a big stack: automerge and the simulated runtimes nest deeply.
#[allow(
    clippy::disallowed_methods,
    reason = "a thread that runs a whole simulation, outside any"
)]
fn on_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn_scoped(s, f)
            .expect("spawn the simulation thread")
            .join()
            .expect("the simulation thread panicked")
    })
}

/// Run seeds from `next` until `stop` says so, on `jobs` threads.
#[allow(
    clippy::disallowed_methods,
    reason = "threads that each run whole simulations, outside any"
)]
fn sweep(
    args: &Args,
    base: &RunConfig,
    jobs: usize,
    next: &AtomicU64,
    stop: &(dyn Fn(u64) -> bool + Sync),
) -> anyhow::Result<(u64, Vec<RunResult>)> {
    let failed = Mutex::new(Vec::new());
    let done = AtomicU64::new(0);
    let stdout = Mutex::new(std::io::stdout());
    let errors = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            std::thread::Builder::new()
                .stack_size(64 << 20)
                .spawn_scoped(s, || {
                    loop {
                        let seed = next.fetch_add(1, Ordering::SeqCst);
                        if stop(seed) {
                            return;
                        }
                        let config = RunConfig {
                            seed,
                            ..base.clone()
                        };
                        let result = match run_checked(args, &config) {
                            Ok(result) => result,
                            Err(e) => {
                                errors.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                                return;
                            }
                        };
                        let mut out = stdout.lock().unwrap_or_else(|p| p.into_inner());
                        if let Err(e) = report(args, &result, &mut *out) {
                            errors.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                        }
                        let _ = out.flush();
                        done.fetch_add(1, Ordering::SeqCst);
                        if !result.violations.is_empty() {
                            failed
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(result);
                        }
                    }
                })
                .expect("spawn a worker thread");
        }
    });
    if let Some(e) = errors.into_inner().unwrap_or_default().into_iter().next() {
        return Err(e);
    }
    let mut failed = failed.into_inner().unwrap_or_default();
    failed.sort_by_key(|r| r.config.seed);
    Ok((done.load(Ordering::SeqCst), failed))
}

/// `canopy-sim`'s main; returns the process exit code.
#[allow(
    clippy::disallowed_methods,
    reason = "a sweep's wall-clock time: its soak deadline and its summary's rate"
)]
pub fn main_with(args: Args) -> anyhow::Result<i32> {
    let base = RunConfig {
        nodes: args.nodes.max(1),
        steps: args.steps,
        bugs: bugs(&args.bugs)?,
        ..RunConfig::new(0)
    };
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    if let Some(seed) = args.seed {
        let config = RunConfig { seed, ..base };
        let result = on_big_stack(|| run_checked(&args, &config))?;
        if args.print_trace {
            print!("{}", result.trace.text());
        }
        report(&args, &result, &mut std::io::stdout())?;
        return Ok(i32::from(!result.violations.is_empty()));
    }
    let started = Instant::now();
    let (label, done, failed) = if let Some(range) = &args.seeds {
        let (a, b) = parse_range(range)?;
        let next = AtomicU64::new(a);
        let (done, failed) = sweep(&args, &base, jobs, &next, &|seed| seed >= b)?;
        (format!("seeds={a}..{b}"), done, failed)
    } else if args.soak {
        let deadline = started + Duration::from_secs(args.duration);
        let next = AtomicU64::new(args.from);
        let (done, failed) = sweep(&args, &base, jobs, &next, &|_| Instant::now() >= deadline)?;
        (format!("soak from={}", args.from), done, failed)
    } else {
        bail!("say what to run: --seed N, --seeds A..B or --soak (see --help)");
    };
    let elapsed = started.elapsed().as_secs_f64();
    let per_minute = done as f64 * 60.0 / elapsed.max(1e-9);
    println!(
        "summary {label} runs={done} failed={} jobs={jobs} nodes={} steps={} elapsed={elapsed:.1}s seeds_per_min={per_minute:.0}",
        failed.len(),
        base.nodes,
        base.steps,
    );
    for r in &failed {
        println!(
            "failed seed={} replay: {}",
            r.config.seed,
            r.config.replay_command()
        );
    }
    Ok(i32::from(!failed.is_empty()))
}
