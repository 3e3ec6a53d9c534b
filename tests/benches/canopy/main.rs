//! Canopy's benchmark suite: the same hello component served by Canopy
//! (`canopy dream`, through its gateway) and by `wasmtime serve`, driven by
//! one load generator in the same run; plus per-request overhead over bare
//! hyper, cold start, push to serving, density and store throughput.
//!
//! `cargo bench -p canopy-tests --bench canopy` runs the full suite (release
//! build of `canopy`, 10 s load phases) and writes `docs/performance.json`;
//! `-- --quick` or `CANOPY_BENCH=quick` runs a short version (under two
//! minutes, the `canopy` of the bench's own build profile unless `--release`
//! is given,
//! the reference skipped if the wasmtime CLI is absent) that only checks
//! every figure was produced, and writes its JSON under the target dir.
//!
//! `-- --only PHASE[,PHASE…]` runs only some phases (`warm`, `deploy`,
//! `density`, `restart`, `compile`, `store`, `auth`, `cluster5`, `replication`;
//! `cluster` means the last two); in full mode their results replace those
//! keys of `docs/performance.json`, the rest is kept.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark reports its progress and figures on the terminal"
)]

mod auth;
mod cluster;
mod load;
mod servers;
mod store;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use canopy_node::test_guests::Guest;
use canopy_tests::{Dream, Project, testfn, workspace_root};
use serde_json::{Map, Value, json};

use load::{LoadResult, Target};
use servers::{BareHyper, WasmtimeServe};

/// What the hello component answers for `/hello` (and so what the bare
/// hyper server answers).
const HELLO_BODY: &str = "Hello from Canopy!\n/hello\n";

/// Durations and sizes of one run.
struct Mode {
    quick: bool,
    warmup: Duration,
    duration: Duration,
    connections: usize,
    /// The fixed, lower rate for the latency percentiles.
    rate_rps: u64,
    rate_connections: usize,
    samples: usize,
    density_functions: usize,
    inflight_requests: usize,
    small_blobs: usize,
    large_blobs: usize,
    /// Timed pushes to the 5-node dream.
    cluster_pushes: usize,
    /// Size of the blob replicated between two nodes, and how many times.
    replication_mib: usize,
    replication_runs: usize,
    /// The phases to run.
    phases: BTreeSet<&'static str>,
    /// Whether `--only` chose the phases.
    only: bool,
}

/// Every phase, in the order they run.
const PHASES: [&str; 9] = [
    "warm",
    "deploy",
    "density",
    "restart",
    "compile",
    "store",
    "auth",
    "cluster5",
    "replication",
];

/// Names that stand for several phases.
const GROUPS: [(&str, &[&str]); 1] = [("cluster", &["cluster5", "replication"])];

/// `--only a,b` (or `--only=a,b`): the phases named; else all of them.
fn phases_from_args() -> Result<Option<BTreeSet<&'static str>>> {
    let args: Vec<String> = std::env::args().collect();
    let value = args.iter().enumerate().find_map(|(i, a)| {
        if a == "--only" {
            Some(args.get(i + 1).cloned().unwrap_or_default())
        } else {
            a.strip_prefix("--only=").map(str::to_owned)
        }
    });
    let Some(value) = value else { return Ok(None) };
    let mut chosen = BTreeSet::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if let Some((_, members)) = GROUPS.iter().find(|(group, _)| *group == name) {
            chosen.extend(members.iter().copied());
            continue;
        }
        let phase = PHASES.iter().find(|p| **p == name).with_context(|| {
            format!(
                "unknown phase {name:?} after --only; the phases are {}",
                PHASES.join(", ")
            )
        })?;
        chosen.insert(*phase);
    }
    ensure!(
        !chosen.is_empty(),
        "--only needs phases: {}",
        PHASES.join(", ")
    );
    Ok(Some(chosen))
}

impl Mode {
    fn from_args() -> Result<Mode> {
        let quick = std::env::args().any(|a| a == "--quick")
            || std::env::var("CANOPY_BENCH").is_ok_and(|v| v == "quick");
        let only = phases_from_args()?;
        let mode = if quick {
            Mode {
                quick,
                warmup: Duration::from_millis(300),
                duration: Duration::from_secs(2),
                connections: 32,
                rate_rps: 200,
                rate_connections: 8,
                samples: 1,
                density_functions: 4,
                inflight_requests: 8,
                small_blobs: 500,
                large_blobs: 1,
                cluster_pushes: 2,
                replication_mib: 32,
                replication_runs: 1,
                phases: BTreeSet::new(),
                only: false,
            }
        } else {
            Mode {
                quick,
                warmup: Duration::from_secs(2),
                duration: Duration::from_secs(10),
                connections: 32,
                rate_rps: 1000,
                rate_connections: 16,
                samples: 5,
                density_functions: 40,
                inflight_requests: 64,
                small_blobs: 2000,
                large_blobs: 3,
                cluster_pushes: 10,
                replication_mib: 256,
                replication_runs: 3,
                phases: BTreeSet::new(),
                only: false,
            }
        };
        Ok(Mode {
            only: only.is_some(),
            phases: only.unwrap_or_else(|| PHASES.into_iter().collect()),
            ..mode
        })
    }

    fn runs(&self, phase: &str) -> bool {
        self.phases.contains(phase)
    }
}

fn main() -> Result<()> {
    let mode = Mode::from_args()?;
    let started = Instant::now();
    // The load generator's runtime: two workers, like the servers'.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&mode))?;
    check(&report, &mode)?;
    let out = if mode.quick {
        target_dir().join("canopy-bench.json")
    } else {
        workspace_root().join("docs/performance.json")
    };
    let written = if mode.only && !mode.quick {
        merge_into(&out, &report, &mode)?
    } else {
        report.clone()
    };
    std::fs::write(&out, serde_json::to_string_pretty(&written)? + "\n")?;
    print_table(&report);
    eprintln!(
        "canopy bench ({}) finished in {:.0} s; results in {}",
        if mode.quick { "quick" } else { "full" },
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> Value {
    let lscpu = command_output("lscpu", &[]);
    let field = |name: &str| {
        lscpu
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim_start_matches(':').trim().to_owned())
            .unwrap_or_default()
    };
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
        })
        .unwrap_or_default();
    json!({
        "cpu": field("Model name"),
        "cpus": field("CPU(s)"),
        "mem_total_kib": mem_total,
        "kernel": command_output("uname", &["-r"]),
        "load_avg_at_start": load_avg(),
    })
}

/// The `canopy` binary to measure: a release build (built here, a no-op
/// when fresh) in full mode or with `--release`; else the one built in this
/// bench's own profile (`debug`, or `sim` in CI).
fn canopy_binary(mode: &Mode) -> Result<(PathBuf, String)> {
    let release = !mode.quick || std::env::args().any(|a| a == "--release");
    if !release {
        return Ok((canopy_tests::canopy_bin(), canopy_tests::build_profile()));
    }
    eprintln!("building canopy (release)…");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "canopy-node", "--bin", "canopy"])
        .current_dir(workspace_root())
        .status()?;
    ensure!(status.success(), "cargo build --release of canopy failed");
    Ok((target_dir().join("release/canopy"), "release".to_owned()))
}

fn summarize(result: &LoadResult) -> Value {
    json!({
        "requests": result.requests,
        "errors": result.errors,
        "rps": result.rps(),
        "p50_ms": result.ms(0.50),
        "p99_ms": result.ms(0.99),
        "p999_ms": result.ms(0.999),
        "max_ms": result.ms(1.0),
    })
}

/// Throughput (closed loop) and latency (fixed rate) of one server.
async fn warm(mode: &Mode, target: &Target) -> Result<Value> {
    let throughput =
        load::closed_loop(target, mode.connections, mode.warmup, mode.duration).await?;
    let latency = load::fixed_rate(
        target,
        mode.rate_connections,
        mode.rate_rps,
        mode.warmup,
        mode.duration,
    )
    .await?;
    // One connection, back to back: the latency of a request with no queue.
    let sequential = load::closed_loop(target, 1, mode.warmup, mode.duration / 2).await?;
    Ok(json!({
        "load_avg": load_avg(),
        "throughput": summarize(&throughput),
        "fixed_rate": summarize(&latency),
        "sequential": summarize(&sequential),
    }))
}

fn hello_project(project: &Project, hello: &Path) -> Result<()> {
    project.write("functions/hello.wasm", std::fs::read(hello)?).write(
        "canopy.yaml",
        "project: bench\nfunctions:\n  hello:\n    wasm: functions/hello.wasm\n    http: { path: /hello }\n    limits: { timeout: 2s, memory: 64MiB }\n",
    );
    Ok(())
}

async fn run(mode: &Mode) -> Result<Value> {
    let mut report = Map::new();
    report.insert(
        "mode".into(),
        json!(if mode.quick { "quick" } else { "full" }),
    );
    report.insert("machine".into(), machine());
    report.insert("phases".into(), json!(mode.phases));
    report.insert(
        "settings".into(),
        json!({
            "connections": mode.connections,
            "duration_s": mode.duration.as_secs_f64(),
            "warmup_s": mode.warmup.as_secs_f64(),
            "fixed_rate_rps": mode.rate_rps,
            "fixed_rate_connections": mode.rate_connections,
        }),
    );

    let dream_phases = ["warm", "deploy", "density", "restart"];
    let canopy = if dream_phases
        .iter()
        .chain(&["cluster5"])
        .any(|p| mode.runs(p))
    {
        let (canopy, build) = canopy_binary(mode)?;
        report.insert("canopy_build".into(), json!(build));
        Some(canopy)
    } else {
        None
    };
    let hello = if dream_phases
        .iter()
        .chain(&["compile"])
        .any(|p| mode.runs(p))
    {
        eprintln!("building the hello guest…");
        Some(Guest::HELLO.build()?)
    } else {
        None
    };

    if let (Some(canopy), Some(hello)) = (&canopy, &hello)
        && dream_phases.iter().any(|p| mode.runs(p))
    {
        single_node(mode, canopy, hello, &mut report).await?;
    }

    if let Some(hello) = &hello
        && mode.runs("compile")
    {
        eprintln!("in-process compile and cache load…");
        report.insert("compile".into(), compile(hello).await?);
    }

    if mode.runs("store") {
        eprintln!("store…");
        report.insert(
            "store".into(),
            json!({
                "blob_4kib": store::measure(4 << 10, mode.small_blobs)?,
                "blob_64mib": store::measure(64 << 20, mode.large_blobs)?,
            }),
        );
    }

    if mode.runs("auth") {
        eprintln!("auth: the token check of an admin request or a push…");
        let checks = if mode.quick { 2_000 } else { 200_000 };
        let mut figures = auth::measure(checks)?;
        eprintln!("auth: signed cluster records, per push…");
        let pushes = if mode.quick { 100 } else { 1_000 };
        figures["records"] = auth::records(pushes)?;
        report.insert("auth".into(), figures);
    }

    if let Some(canopy) = &canopy
        && mode.runs("cluster5")
    {
        eprintln!("cluster: 5-node dream, push to serving everywhere, RSS per node…");
        report.insert("cluster".into(), cluster::five_nodes(mode, canopy).await?);
    }
    if mode.runs("replication") {
        eprintln!(
            "replication: a {} MiB blob between two nodes…",
            mode.replication_mib
        );
        report.insert(
            "replication".into(),
            cluster::replication(mode.replication_mib << 20, mode.replication_runs).await?,
        );
    }
    report.insert("load_avg_at_end".into(), json!(load_avg()));
    Ok(Value::Object(report))
}

/// The phases on one single-node dream: warm load (and the references),
/// deploy, density, restart.
async fn single_node(
    mode: &Mode,
    canopy: &Path,
    hello: &Path,
    report: &mut Map<String, Value>,
) -> Result<()> {
    // Canopy: one dream, the hello project pushed to it.
    let data = tempfile::tempdir()?;
    let mut dream = Dream::start_with(canopy, data.path())?;
    let project = Project::new()?;
    hello_project(&project, hello)?;
    let commit = project.commit("hello")?;
    project.push(&dream.remote("bench"), "main")?;
    dream.wait_live("bench", "main", &commit).await;
    let gateway: std::net::SocketAddr = dream
        .http
        .trim_start_matches("http://")
        .parse()
        .context("dream.json's http is http://IP:PORT")?;
    let canopy_target = Target {
        addr: gateway,
        host: "bench.localhost".into(),
        path: "/hello".into(),
    };
    let (_, _, status, body) = load::single(&canopy_target).await?;
    ensure!(
        status == 200 && body == HELLO_BODY,
        "canopy answered {status}: {body:?}"
    );

    if mode.runs("warm") {
        warm_phase(mode, hello, &canopy_target, report).await?;
    }

    if mode.runs("deploy") {
        eprintln!("cold start and push to serving…");
        report.insert("deploy".into(), deploy(mode, &dream).await?);
    }

    if mode.runs("density") {
        eprintln!("density…");
        report.insert("density".into(), density(mode, &dream).await?);
    }

    if mode.runs("restart") {
        eprintln!("restart with the compiled cache…");
        report.insert(
            "restart".into(),
            restart(
                &mut dream,
                canopy,
                data.path(),
                &canopy_target,
                mode.samples,
            )
            .await?,
        );
    }
    dream.stop()?;
    Ok(())
}

/// Warm throughput and latency of Canopy, the references and bare hyper;
/// the per-request overhead.
async fn warm_phase(
    mode: &Mode,
    hello: &Path,
    canopy_target: &Target,
    report: &mut Map<String, Value>,
) -> Result<()> {
    let mut warm_results = Map::new();
    eprintln!("canopy: warm throughput and latency…");
    warm_results.insert("canopy".into(), warm(mode, canopy_target).await?);

    // The reference, same component, same load.
    match servers::find_wasmtime(!mode.quick) {
        Ok(wasmtime) => {
            eprintln!("canopy vs wasmtime serve: interleaved fixed-rate rounds…");
            let rounds = latency_rounds(mode, &wasmtime, hello, canopy_target).await?;
            report.insert("latency_rounds".into(), rounds);
            for (name, extra) in [
                ("wasmtime_serve", &[][..]),
                ("wasmtime_serve_pooling", &["-O", "pooling-allocator=y"][..]),
            ] {
                eprintln!("{name}: warm throughput and latency…");
                let server = WasmtimeServe::start(&wasmtime, hello, extra).await?;
                let target = Target {
                    addr: server.addr,
                    host: "localhost".into(),
                    path: "/hello".into(),
                };
                let mut result = warm(mode, &target).await?;
                result["idle_rss_bytes"] = json!(servers::rss_bytes(server.pid()).ok());
                warm_results.insert(name.into(), result);
            }
        }
        Err(reason) => {
            eprintln!("skipping the wasmtime serve reference: {reason:#}");
            report.insert("reference_skipped".into(), json!(format!("{reason:#}")));
        }
    }
    eprintln!("bare hyper: warm throughput and latency…");
    let bare = BareHyper::start(HELLO_BODY)?;
    let bare_target = Target {
        addr: bare.addr,
        host: "localhost".into(),
        path: "/hello".into(),
    };
    warm_results.insert("bare_hyper".into(), warm(mode, &bare_target).await?);
    drop(bare);
    let seq_p50 = |name: &str| {
        warm_results
            .get(name)
            .map(|v| v["sequential"]["p50_ms"].as_f64().unwrap_or(f64::NAN))
    };
    let overhead = json!({
        "canopy_over_bare_p50_us": seq_p50("canopy").zip(seq_p50("bare_hyper")).map(|(c, b)| (c - b) * 1000.0),
        "wasmtime_serve_over_bare_p50_us": seq_p50("wasmtime_serve").zip(seq_p50("bare_hyper")).map(|(c, b)| (c - b) * 1000.0),
    });
    report.insert("warm".into(), Value::Object(warm_results));
    report.insert("overhead".into(), overhead);
    Ok(())
}

/// p99 at a fixed rate, Canopy and `wasmtime serve` (defaults) alternating
/// in `mode.samples` rounds: a single run of each, minutes apart on a shared
/// machine, compares the machine's noise more than the servers.
async fn latency_rounds(
    mode: &Mode,
    wasmtime: &Path,
    hello: &Path,
    canopy_target: &Target,
) -> Result<Value> {
    let server = WasmtimeServe::start(wasmtime, hello, &[]).await?;
    let wasmtime_target = Target {
        addr: server.addr,
        host: "localhost".into(),
        path: "/hello".into(),
    };
    let (mut canopy_p99, mut wasmtime_p99) = (Vec::new(), Vec::new());
    let (mut canopy_p999, mut wasmtime_p999) = (Vec::new(), Vec::new());
    for _ in 0..mode.samples.max(1) {
        for (target, p99, p999) in [
            (canopy_target, &mut canopy_p99, &mut canopy_p999),
            (&wasmtime_target, &mut wasmtime_p99, &mut wasmtime_p999),
        ] {
            let result = load::fixed_rate(
                target,
                mode.rate_connections,
                mode.rate_rps,
                mode.warmup,
                mode.duration,
            )
            .await?;
            p99.push(result.ms(0.99));
            p999.push(result.ms(0.999));
        }
    }
    Ok(json!({
        "rounds": canopy_p99.len(),
        "rate_rps": mode.rate_rps,
        "canopy_p99_ms_median": median(canopy_p99.clone()),
        "wasmtime_serve_p99_ms_median": median(wasmtime_p99.clone()),
        "canopy_p999_ms_median": median(canopy_p999.clone()),
        "wasmtime_serve_p999_ms_median": median(wasmtime_p999.clone()),
        "canopy_p99_ms": canopy_p99,
        "wasmtime_serve_p99_ms": wasmtime_p99,
        "canopy_p999_ms": canopy_p999,
        "wasmtime_serve_p999_ms": wasmtime_p999,
        "load_avg": load_avg(),
    }))
}

/// `--only` in full mode: the phases run replace their keys in the
/// existing `docs/performance.json`; every other key is kept.
fn merge_into(path: &Path, report: &Value, mode: &Mode) -> Result<Value> {
    let mut merged: Value = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not JSON", path.display()))?,
        Err(_) => json!({}),
    };
    let target = merged
        .as_object_mut()
        .with_context(|| format!("{} is not a JSON object", path.display()))?;
    let mut keys: Vec<&str> = mode
        .phases
        .iter()
        .map(|p| if *p == "cluster5" { "cluster" } else { *p })
        .collect();
    if mode.runs("warm") {
        keys.extend(["overhead", "reference_skipped", "latency_rounds"]);
    }
    for key in keys {
        match report.get(key) {
            Some(value) => {
                target.insert(key.into(), value.clone());
            }
            None => {
                target.remove(key);
            }
        }
    }
    Ok(merged)
}

/// Wait for the first 200 whose body contains `expect`, polling; returns
/// the time since `since`.
async fn first_ok(target: &Target, expect: &str, since: Instant) -> Result<Duration> {
    let deadline = since + Duration::from_secs(120);
    loop {
        if let Ok((_, _, 200, body)) = load::single(target).await
            && String::from_utf8_lossy(&body).contains(expect)
        {
            return Ok(since.elapsed());
        }
        if Instant::now() > deadline {
            bail!("{expect:?} was not served within 120 s");
        }
        // Polling granularity bounds the figure's resolution: keep it fine.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Push-to-serving for components never seen (compiled at deploy) and for
/// a component already compiled; the first request's time to first byte
/// right after a deploy.
async fn deploy(mode: &Mode, dream: &Dream) -> Result<Value> {
    let project = Project::new()?;
    let target = Target {
        addr: dream.http.trim_start_matches("http://").parse()?,
        host: "cold.localhost".into(),
        path: "/t/hello".into(),
    };
    let yaml =
        "project: cold\nfunctions:\n  t:\n    wasm: functions/t.wasm\n    http: { path: /t }\n";
    let (mut unseen, mut seen, mut push_ms, mut first_byte) = (vec![], vec![], vec![], vec![]);
    for sample in 0..mode.samples {
        for (version, bucket) in [
            (format!("cold-{sample}"), 0),
            (format!("cold-{sample}-b"), 0),
            (format!("cold-{sample}"), 1),
        ] {
            project
                .write("functions/t.wasm", testfn(&version))
                .write("canopy.yaml", yaml);
            // A fresh commit every time (the message differs), so every
            // push deploys.
            project.commit(&format!("{version} {bucket} {}", unseen.len() + seen.len()))?;
            let push_start = Instant::now();
            project.push(&dream.remote("cold"), "main")?;
            let pushed = Instant::now();
            push_ms.push(pushed.duration_since(push_start).as_secs_f64() * 1000.0);
            let marker = format!("VERSION:{version}");
            let took = first_ok(&target, &marker, pushed).await?;
            let ms = took.as_secs_f64() * 1000.0;
            if bucket == 0 {
                unseen.push(ms)
            } else {
                seen.push(ms)
            }
            let (ttfb, _, _, _) = load::single(&target).await?;
            first_byte.push(ttfb.as_secs_f64() * 1000.0);
        }
    }
    Ok(json!({
        "samples": mode.samples,
        "git_push_ms_median": median(push_ms),
        "push_to_first_200_unseen_ms_median": median(unseen.clone()),
        "push_to_first_200_unseen_ms": unseen,
        "push_to_first_200_seen_ms_median": median(seen.clone()),
        "push_to_first_200_seen_ms": seen,
        "request_after_deploy_ttfb_ms_median": median(first_byte),
    }))
}

/// RSS per idle deployed function and per in-flight request.
async fn density(mode: &Mode, dream: &Dream) -> Result<Value> {
    let pid = dream.pid().context("the dream runs")?;
    let addr: std::net::SocketAddr = dream.http.trim_start_matches("http://").parse()?;
    let project = Project::new()?;
    let mut yaml = String::from("project: dense\nfunctions:\n");
    for i in 0..mode.density_functions {
        project.write(
            &format!("functions/f{i}.wasm"),
            testfn(&format!("dense-{i}")),
        );
        yaml += &format!(
            "  f{i}:\n    wasm: functions/f{i}.wasm\n    http: {{ path: /f{i} }}\n    limits: {{ timeout: 60s, memory: 64MiB }}\n"
        );
    }
    project.write("canopy.yaml", &yaml);
    let rss_before = servers::rss_bytes(pid)?;
    let commit = project.commit("dense")?;
    project.push(&dream.remote("dense"), "main")?;
    dream.wait_live("dense", "main", &commit).await;
    for i in 0..mode.density_functions {
        let target = Target {
            addr,
            host: "dense.localhost".into(),
            path: format!("/f{i}/hello"),
        };
        let (_, _, status, _) = load::single(&target).await?;
        ensure!(status == 200, "dense f{i} answered {status}");
    }
    let rss_deployed = servers::rss_bytes(pid)?;
    let per_function =
        rss_deployed.saturating_sub(rss_before) as f64 / mode.density_functions as f64;

    // In-flight: POST .../echo with a body that stays open; the guest has
    // answered the head and waits for more body, holding its instance.
    let mut held = Vec::new();
    for _ in 0..mode.inflight_requests {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, BodyChannel>(
            hyper_util::rt::TokioIo::new(stream),
        )
        .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let body = http_body_util::StreamBody::new(tokio_stream_from(rx));
        let request = http::Request::post("/f0/echo")
            .header("host", "dense.localhost")
            .body(body)?;
        tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(
            b"x",
        ))))
        .await
        .ok();
        let response = sender.send_request(request).await?;
        ensure!(
            response.status() == 200,
            "echo answered {}",
            response.status()
        );
        held.push((tx, response, sender));
    }
    let rss_inflight = servers::rss_bytes(pid)?;
    let per_inflight =
        rss_inflight.saturating_sub(rss_deployed) as f64 / mode.inflight_requests as f64;
    drop(held);
    let gib = 1u64 << 30;
    Ok(json!({
        "functions": mode.density_functions,
        "rss_before_bytes": rss_before,
        "rss_deployed_warm_bytes": rss_deployed,
        "rss_per_idle_function_bytes": per_function,
        "inflight_requests": mode.inflight_requests,
        "rss_with_inflight_bytes": rss_inflight,
        "rss_per_inflight_request_bytes": per_inflight,
        "functions_per_gib_extrapolated": gib.saturating_sub(rss_before) as f64 / per_function.max(1.0),
    }))
}

type BodyChannel = http_body_util::StreamBody<ChannelStream>;
type Chunk = Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>;

/// An mpsc receiver as a `Stream` of body frames.
struct ChannelStream(tokio::sync::mpsc::Receiver<Chunk>);

impl futures::Stream for ChannelStream {
    type Item = Chunk;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Chunk>> {
        self.0.poll_recv(cx)
    }
}

fn tokio_stream_from(rx: tokio::sync::mpsc::Receiver<Chunk>) -> ChannelStream {
    ChannelStream(rx)
}

/// Stop the dream and start it again on the same data dir, `samples` times:
/// the compiled code comes from the disk cache. Times each start to ready,
/// and the first request's time to first byte (on a new connection) once
/// the node serves again; reports medians and every sample (a single
/// restart is too noisy to compare with a sub-millisecond target).
async fn restart(
    dream: &mut Dream,
    canopy: &Path,
    data_dir: &Path,
    target: &Target,
    samples: usize,
) -> Result<Value> {
    let (mut ready, mut first, mut first_total, mut second) = (vec![], vec![], vec![], vec![]);
    for _ in 0..samples.max(1) {
        dream.stop()?;
        let start = Instant::now();
        *dream = Dream::start_with(canopy, data_dir)?;
        ready.push(start.elapsed().as_secs_f64() * 1000.0);
        // The gateway may move to a new port.
        let target = Target {
            addr: dream.http.trim_start_matches("http://").parse()?,
            ..target.clone()
        };
        let (ttfb, total, status, body) = load::single(&target).await?;
        ensure!(
            status == 200 && body == HELLO_BODY,
            "after restart canopy answered {status}: {body:?}"
        );
        let (warm_ttfb, _, _, _) = load::single(&target).await?;
        first.push(ttfb.as_secs_f64() * 1000.0);
        first_total.push(total.as_secs_f64() * 1000.0);
        second.push(warm_ttfb.as_secs_f64() * 1000.0);
    }
    Ok(json!({
        "restarts": first.len(),
        "start_to_ready_ms": median(ready.clone()),
        "first_request_ttfb_ms": median(first.clone()),
        "first_request_total_ms": median(first_total),
        "second_request_ttfb_ms": median(second.clone()),
        "samples": {
            "start_to_ready_ms": ready,
            "first_request_ttfb_ms": first,
            "second_request_ttfb_ms": second,
        },
    }))
}

/// The runtime alone: compiling the hello component, and loading it from
/// the on-disk cache in a fresh runtime (what a restart does).
async fn compile(hello: &Path) -> Result<Value> {
    use canopy_node::runtime::{Runtime, RuntimeConfig, raw_cid};
    let wasm = std::fs::read(hello)?;
    let cid = raw_cid(&wasm);
    let dir = tempfile::tempdir()?;
    let start = Instant::now();
    let runtime = Runtime::new(RuntimeConfig::new(dir.path()))?;
    let engine_ms = start.elapsed().as_secs_f64() * 1000.0;
    let start = Instant::now();
    runtime.load(&cid, &wasm).await?;
    let compile_ms = start.elapsed().as_secs_f64() * 1000.0;
    drop(runtime);
    let runtime = Runtime::new(RuntimeConfig::new(dir.path()))?;
    let start = Instant::now();
    runtime.load(&cid, &wasm).await?;
    let disk_ms = start.elapsed().as_secs_f64() * 1000.0;
    ensure!(
        runtime.load_stats().from_disk == 1,
        "the second load did not come from the disk cache"
    );
    Ok(json!({
        "wasm_bytes": wasm.len(),
        "engine_start_ms": engine_ms,
        "compile_ms": compile_ms,
        "load_from_disk_cache_ms": disk_ms,
    }))
}

/// Quick mode's only check: every figure of the phases run is a finite
/// number.
fn check(report: &Value, mode: &Mode) -> Result<()> {
    let mut missing = Vec::new();
    let needed = [
        "/warm/canopy/throughput/rps",
        "/warm/canopy/fixed_rate/p99_ms",
        "/warm/bare_hyper/throughput/rps",
        "/overhead/canopy_over_bare_p50_us",
        "/deploy/push_to_first_200_unseen_ms_median",
        "/deploy/push_to_first_200_seen_ms_median",
        "/restart/first_request_ttfb_ms",
        "/density/rss_per_idle_function_bytes",
        "/density/rss_per_inflight_request_bytes",
        "/compile/load_from_disk_cache_ms",
        "/store/blob_4kib/get_mb_per_s",
        "/store/blob_64mib/get_mb_per_s",
        "/cluster/push_to_200_pushed_node_ms_median",
        "/cluster/push_to_200_all_nodes_ms_median",
        "/cluster/push_to_200_all_nodes_ms_max",
        "/cluster/rss_idle/mean_bytes",
        "/cluster/rss_one_project/mean_bytes",
        "/replication/mb_per_s_median",
    ];
    let needed = needed.into_iter().filter(|p| {
        let phase = p.split('/').nth(1).unwrap_or_default();
        let phase = match phase {
            "overhead" => "warm",
            "cluster" => "cluster5",
            other => other,
        };
        mode.runs(phase)
    });
    for pointer in needed {
        if !report
            .pointer(pointer)
            .and_then(Value::as_f64)
            .is_some_and(f64::is_finite)
        {
            missing.push(pointer);
        }
    }
    if mode.runs("warm")
        && report.get("reference_skipped").is_none()
        && report
            .pointer("/warm/wasmtime_serve/throughput/rps")
            .and_then(Value::as_f64)
            .is_none()
    {
        missing.push("/warm/wasmtime_serve/throughput/rps");
    }
    ensure!(
        missing.is_empty(),
        "the benchmark produced no figure for {missing:?}"
    );
    Ok(())
}

fn print_table(report: &Value) {
    println!(
        "canopy build: {} (only a release build gives comparable figures)",
        report["canopy_build"].as_str().unwrap_or("?")
    );
    if report.get("warm").is_some() {
        print_warm_table(report);
    }
    let mut shown = Map::new();
    for key in [
        "overhead",
        "deploy",
        "restart",
        "compile",
        "density",
        "store",
        "auth",
        "cluster",
        "replication",
    ] {
        if let Some(value) = report.get(key) {
            shown.insert(key.into(), value.clone());
        }
    }
    println!(
        "\n{}",
        serde_json::to_string_pretty(&shown).unwrap_or_default()
    );
}

fn print_warm_table(report: &Value) {
    let get = |p: &str| report.pointer(p).and_then(Value::as_f64);
    let fmt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.2}"));
    println!(
        "\n| server | rps @{} conns | p50 ms | p99 ms | p99.9 ms (fixed rate) | seq p50 ms |",
        report["settings"]["connections"]
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for name in [
        "canopy",
        "wasmtime_serve",
        "wasmtime_serve_pooling",
        "bare_hyper",
    ] {
        if report["warm"].get(name).is_none() {
            continue;
        }
        println!(
            "| {name} | {:.0} | {} | {} | {} | {} |",
            get(&format!("/warm/{name}/throughput/rps")).unwrap_or(f64::NAN),
            fmt(get(&format!("/warm/{name}/fixed_rate/p50_ms"))),
            fmt(get(&format!("/warm/{name}/fixed_rate/p99_ms"))),
            fmt(get(&format!("/warm/{name}/fixed_rate/p999_ms"))),
            fmt(get(&format!("/warm/{name}/sequential/p50_ms"))),
        );
    }
    if let (Some(c), Some(w)) = (
        get("/warm/canopy/throughput/rps"),
        get("/warm/wasmtime_serve/throughput/rps"),
    ) {
        println!("\ncanopy / wasmtime serve throughput: {:.2}x", c / w);
    }
}
