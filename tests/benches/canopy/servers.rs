//! The servers under test besides Canopy: `wasmtime serve` (the reference
//! wasi:http host) and a bare hyper handler (the floor any HTTP server on
//! this machine stands on).

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;

use crate::load::{self, Target};

/// The wasmtime CLI version the comparison is made with.
pub const WASMTIME_VERSION: &str = "48.0.8";
/// Where the wasmtime CLI is installed when `$WASMTIME` is not set: a cache
/// outside the clone, so CI and reruns reuse one 18-minute install.
pub const WASMTIME_DEFAULT: &str = "/var/cache/canopy-tools/wasmtime-48.0.8/bin/wasmtime";

/// A free TCP port on loopback (bound and released; a race with another
/// process taking it is possible but unlikely on a test machine).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Find the wasmtime CLI: `$WASMTIME`, else the cache path; in full mode
/// install it there with `cargo install` when missing. `Err` says why the
/// reference cannot be run.
pub fn find_wasmtime(install: bool) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("WASMTIME") {
        let path = PathBuf::from(path);
        if path.exists() {
            return Ok(path);
        }
        bail!("$WASMTIME is {} but no such file exists", path.display());
    }
    let default = PathBuf::from(WASMTIME_DEFAULT);
    if default.exists() {
        return Ok(default);
    }
    if !install {
        bail!(
            "wasmtime {WASMTIME_VERSION} is not at {WASMTIME_DEFAULT} and $WASMTIME is unset \
             (run the full benchmark once to install it, ~18 min)"
        );
    }
    let root = default
        .parent()
        .and_then(Path::parent)
        .context("the wasmtime path has a root")?;
    eprintln!(
        "installing wasmtime-cli {WASMTIME_VERSION} into {} (takes ~18 min on 2 cores)",
        root.display()
    );
    let status = Command::new("cargo")
        .args([
            "install",
            "wasmtime-cli",
            "--version",
            WASMTIME_VERSION,
            "--locked",
            "--root",
        ])
        .arg(root)
        .status()
        .context("running cargo install")?;
    if !status.success() || !default.exists() {
        bail!("cargo install wasmtime-cli {WASMTIME_VERSION} failed ({status})");
    }
    Ok(default)
}

/// A running `wasmtime serve`; killed on drop.
pub struct WasmtimeServe {
    child: Child,
    pub addr: SocketAddr,
}

impl WasmtimeServe {
    /// `wasmtime serve -S cli=y [extra] --addr 127.0.0.1:PORT wasm`, ready
    /// when it answers a request.
    pub async fn start(wasmtime: &Path, wasm: &Path, extra: &[&str]) -> Result<WasmtimeServe> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let child = Command::new(wasmtime)
            .args(["serve", "-S", "cli=y"])
            .args(extra)
            .arg("--addr")
            .arg(addr.to_string())
            .arg(wasm)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting wasmtime serve")?;
        let mut server = WasmtimeServe { child, addr };
        let target = Target {
            addr,
            host: "localhost".into(),
            path: "/hello".into(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((_, _, 200, _)) = load::single(&target).await {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("wasmtime serve exited with {status} before answering");
            }
            if Instant::now() > deadline {
                bail!("wasmtime serve did not answer within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare hyper HTTP/1.1 server answering every request with `body`, on its
/// own two-thread tokio runtime (as Canopy's node has), on its own thread.
pub struct BareHyper {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BareHyper {
    pub fn start(body: &'static str) -> Result<BareHyper> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let _ = stream.set_nodelay(true);
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |_req: http::Request<hyper::body::Incoming>| async move {
                                    Ok::<_, Infallible>(
                                        http::Response::builder()
                                            .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                                            .body(Full::new(Bytes::from_static(body.as_bytes())))
                                            .expect("a valid response"),
                                    )
                                });
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        Ok(BareHyper {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for BareHyper {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Resident memory of process `pid` in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kib * 1024)
}
