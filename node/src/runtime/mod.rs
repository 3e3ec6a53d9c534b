//! The function runtime: runs WASI 0.2 components that export
//! `wasi:http/incoming-handler` (what `wasmtime serve`, Spin and wasmCloud
//! run) on wasmtime.
//!
//! Owns: the wasmtime engine (Cranelift, pooling allocator, epoch
//! interruption), the linker (all of WASI 0.2 plus wasi:http, matched by
//! semver so components built against any 0.2.x link), compiled code cached
//! by CID in memory and on disk, and serving one request with a fresh
//! instance under memory, time, fuel and request-body limits. It does not
//! own routing, fetching artifacts from the store, or deciding limits:
//! callers pass bytes, a CID and [`FunctionLimits`] (the node's
//! request-body default and maximum come with [`RuntimeConfig`]).
//!
//! ```no_run
//! # async fn example(wasm: Vec<u8>, cid: cid::Cid, request: hyper::Request<hyper::body::Incoming>)
//! # -> Result<(), canopy_node::runtime::RuntimeError> {
//! use canopy_node::runtime::{FunctionLimits, Runtime, RuntimeConfig};
//!
//! let runtime = Runtime::new(RuntimeConfig::new("/var/lib/canopy/compiled"))?;
//! let function = runtime.load(&cid, &wasm).await?;
//! let response = function.handle(request, &FunctionLimits::default(), "hello").await;
//! # let _ = response; Ok(()) }
//! ```

mod budget;
mod cache;
mod engine;
mod error;
mod function;
mod guest_body;
mod guest_env;
mod guest_log;
mod host;
mod request_body;
mod responses;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cid::Cid;
use multihash_codetable::{Code, MultihashDigest};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

pub use self::budget::{DEFAULT_MEMORY_BUDGET_BYTES, MemoryBudget, MemoryBudgetReport};
pub use self::engine::Allocator;
pub use self::error::RuntimeError;
pub use self::function::{Function, FunctionLimits};
pub use self::guest_body::GuestBodyError;
pub use self::guest_env::{GuestClock, GuestEnv, NodeClock};
pub use self::request_body::{
    BodyLimit, BodyLimitSource, DEFAULT_MAX_REQUEST_BODY_BYTES, DEFAULT_REQUEST_BODY_BYTES,
    RequestBodyLimits,
};
pub use self::responses::format_bytes;

use self::cache::DiskCache;
use self::engine::EpochTicker;
use self::host::Host;

/// How the runtime is sized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Where compiled functions are kept across restarts.
    pub cache_dir: PathBuf,
    /// Instances that may run at once (the pool size); one per in-flight
    /// request. Beyond it, requests get 503.
    pub max_instances: u32,
    /// The largest memory limit any function may have; sizes each pool slot.
    pub max_memory_bytes: u64,
    /// The linear memory all running instances may hold together
    /// (`limits.wasm.memory_budget`; see [`MemoryBudget`]).
    pub memory_budget_bytes: u64,
    /// The request-body limit of functions that set none, and the most one
    /// may set (`limits.wasm.request_body`, `…max_request_body`).
    pub request_body: RequestBodyLimits,
    /// How often running guests are interrupted to yield and check their
    /// deadline: the granularity of timeouts.
    pub epoch_tick: Duration,
}

impl RuntimeConfig {
    /// 1000 instances, 4 GiB per function at most, 2 GiB for all of them
    /// together, request bodies of 32 MiB unless a function asks for up to
    /// 1 GiB, a 10 ms epoch tick.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            max_instances: 1000,
            max_memory_bytes: 4 << 30,
            memory_budget_bytes: DEFAULT_MEMORY_BUDGET_BYTES,
            request_body: RequestBodyLimits::default(),
            epoch_tick: Duration::from_millis(10),
        }
    }
}

/// Where [`Runtime::load`] found each function it returned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Compiled from WebAssembly (slow: Cranelift).
    pub compiled: u64,
    /// Loaded from the on-disk cache.
    pub from_disk: u64,
    /// Already loaded in this process.
    pub from_memory: u64,
}

/// What functions share with the runtime that loaded them; keeping it
/// alive keeps the epoch ticker running for as long as any function lives.
pub(crate) struct Shared {
    engine: Engine,
    max_memory_bytes: u64,
    budget: Arc<MemoryBudget>,
    request_body: RequestBodyLimits,
    /// How an unloaded function's code comes back.
    reload: Arc<Reload>,
    guest: GuestEnv,
    _ticker: EpochTicker,
}

/// Loads functions and keeps them ready to serve.
pub struct Runtime {
    shared: Arc<Shared>,
    allocator: Allocator,
    linker: Arc<Linker<Host>>,
    disk: Arc<DiskCache>,
    loaded: Mutex<BTreeMap<Cid, Arc<Function>>>,
    stats: Mutex<LoadStats>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("allocator", &self.allocator)
            .field("stats", &self.load_stats())
            .finish_non_exhaustive()
    }
}

/// Where a function's compiled code came from.
enum Source {
    Compiled,
    Disk,
}

impl Runtime {
    /// Start a runtime: build the engine and linker, open the cache, and
    /// spawn the epoch ticker.
    ///
    /// Must be called inside a tokio runtime (the ticker is a tokio task,
    /// so guest time follows tokio's clock).
    ///
    /// Functions read the operating system's clock and an OS-seeded random
    /// stream; a node passes its own with [`Runtime::with_guest_env`].
    pub fn new(config: RuntimeConfig) -> Result<Arc<Self>, RuntimeError> {
        let guest = GuestEnv::new(
            Arc::new(NodeClock::new(crate::env::Clock::tokio())),
            crate::env::Rng::from_os(),
        );
        Self::with_guest_env(config, guest)
    }

    /// [`Runtime::new`], with functions reading time and randomness from
    /// `guest` (the node's environment: see [`GuestEnv::of`]).
    pub fn with_guest_env(
        config: RuntimeConfig,
        guest: GuestEnv,
    ) -> Result<Arc<Self>, RuntimeError> {
        if config.memory_budget_bytes == 0 {
            return Err(RuntimeError::Engine {
                reason: "the memory budget must be more than zero".to_string(),
            });
        }
        let body = config.request_body;
        if body.default_bytes == 0 || body.default_bytes > body.max_bytes {
            return Err(RuntimeError::Engine {
                reason: format!(
                    "the default request-body limit ({} bytes) must be more than zero and at most the maximum ({} bytes)",
                    body.default_bytes, body.max_bytes
                ),
            });
        }
        if config.epoch_tick.is_zero() {
            return Err(RuntimeError::Engine {
                reason: "epoch_tick must be longer than zero (10ms is usual)".to_string(),
            });
        }
        let (engine, allocator) = engine::build(&config)?;
        let mut linker = Linker::<Host>::new(&engine);
        let link_error = |error: wasmtime::Error| RuntimeError::Engine {
            reason: format!("cannot link WASI: {error:#}"),
        };
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link_error)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(link_error)?;
        let disk = Arc::new(DiskCache::open(&config.cache_dir, &engine)?);
        let ticker = EpochTicker::spawn(engine.clone(), config.epoch_tick);
        let linker = Arc::new(linker);
        Ok(Arc::new(Self {
            shared: Arc::new(Shared {
                reload: Arc::new(Reload {
                    engine: engine.clone(),
                    linker: linker.clone(),
                    disk: disk.clone(),
                }),
                engine,
                max_memory_bytes: config.max_memory_bytes,
                budget: Arc::new(MemoryBudget::new(config.memory_budget_bytes)),
                request_body: config.request_body,
                guest,
                _ticker: ticker,
            }),
            allocator,
            linker,
            disk,
            loaded: Mutex::new(BTreeMap::new()),
            stats: Mutex::new(LoadStats::default()),
        }))
    }

    /// The node-wide memory budget of functions, and its use.
    pub fn memory_budget(&self) -> MemoryBudgetReport {
        self.shared.budget.report()
    }

    /// The node's request-body limits for functions.
    pub fn request_body_limits(&self) -> RequestBodyLimits {
        self.shared.request_body
    }

    /// The wasmtime engine (for benchmarks and tooling).
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// Whether the instance pool could be reserved.
    pub fn allocator(&self) -> Allocator {
        self.allocator
    }

    /// How many loads compiled, hit the disk cache, or hit memory.
    pub fn load_stats(&self) -> LoadStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The on-disk file holding `cid`'s compiled code (present once loaded).
    pub fn cache_path(&self, cid: &Cid) -> PathBuf {
        self.disk.code_path(cid)
    }

    /// The function for `cid`, whose WebAssembly is `wasm`: from memory if
    /// already loaded, else from the disk cache, else compiled (on a
    /// blocking thread) and cached. `wasm` must hash to `cid`.
    ///
    /// Errors say why the artifact cannot be a function: not WebAssembly, a
    /// core module rather than a component, imports Canopy does not provide,
    /// or no `wasi:http/incoming-handler` export.
    pub async fn load(&self, cid: &Cid, wasm: &[u8]) -> Result<Arc<Function>, RuntimeError> {
        if let Some(function) = self.loaded_function(cid) {
            self.count(|stats| stats.from_memory += 1);
            return Ok(function);
        }
        let engine = self.shared.engine.clone();
        let linker = self.linker.clone();
        let disk = self.disk.clone();
        let key = *cid;
        let wasm = wasm.to_vec();
        let (pre, source) =
            crate::env::spawn_blocking(move || prepare(&engine, &linker, &disk, &key, &wasm))
                .await
                .map_err(|error| RuntimeError::CompileInterrupted {
                    cid: cid.to_string(),
                    reason: error.to_string(),
                })??;
        self.count(|stats| match source {
            Source::Compiled => stats.compiled += 1,
            Source::Disk => stats.from_disk += 1,
        });
        let function = Arc::new(Function::new(*cid, pre, self.shared.clone()));
        function.warm_up().await;
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        // A concurrent load of the same CID may have finished first: keep one.
        Ok(loaded.entry(*cid).or_insert(function).clone())
    }

    /// Forget the in-memory copy of `cid` (a version no longer deployed);
    /// its compiled code stays on disk. True if it was loaded.
    pub fn unload(&self, cid: &Cid) -> bool {
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(cid)
            .is_some()
    }

    /// Unload every function not in `keep` (the components of the releases
    /// that serve): an old version's code leaves memory once nothing
    /// serves it. Returns how many were unloaded.
    pub fn retain_loaded(&self, keep: &BTreeSet<Cid>) -> usize {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        let before = loaded.len();
        loaded.retain(|cid, _| keep.contains(cid));
        before - loaded.len()
    }

    /// Every function loaded (resident or not), by CID.
    pub fn loaded_functions(&self) -> BTreeMap<Cid, Arc<Function>> {
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The CIDs of the functions loaded in memory.
    pub fn loaded_cids(&self) -> BTreeSet<Cid> {
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }

    /// Remove `cid`'s compiled code from the disk cache (its component was
    /// collected). Returns the bytes freed.
    pub fn remove_compiled(&self, cid: &Cid) -> u64 {
        self.disk.remove(cid)
    }

    /// The size of `cid`'s compiled code on disk (0 if not cached): what a
    /// loaded function keeps mapped in memory.
    pub fn compiled_bytes(&self, cid: &Cid) -> u64 {
        std::fs::metadata(self.disk.code_path(cid)).map_or(0, |m| m.len())
    }

    fn loaded_function(&self, cid: &Cid) -> Option<Arc<Function>> {
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(cid)
            .cloned()
    }

    fn count(&self, update: impl FnOnce(&mut LoadStats)) {
        update(&mut self.stats.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// Loads an unloaded function's code back from the compiled-code cache.
pub(crate) struct Reload {
    engine: Engine,
    linker: Arc<Linker<Host>>,
    disk: Arc<DiskCache>,
}

impl Reload {
    /// Whether `cid`'s compiled code is in the cache.
    fn has(&self, cid: &Cid) -> bool {
        self.disk.code_path(cid).is_file()
    }

    /// `cid`'s pre-linked component from the cache. Blocking.
    fn load(&self, cid: &Cid) -> Result<ProxyPre<Host>, String> {
        let component = load_from_disk(&self.engine, &self.disk, cid)
            .ok_or_else(|| "it is no longer in the compiled-code cache".to_owned())?;
        pre_link(&self.linker, cid, &component).map_err(|e| e.to_string())
    }
}

/// Check, compile (or load compiled code), link and pre-instantiate.
/// Blocking: runs on `env::spawn_blocking`.
fn prepare(
    engine: &Engine,
    linker: &Linker<Host>,
    disk: &DiskCache,
    cid: &Cid,
    wasm: &[u8],
) -> Result<(ProxyPre<Host>, Source), RuntimeError> {
    verify_cid(cid, wasm)?;
    check_header(cid, wasm)?;
    let (component, source) = match load_from_disk(engine, disk, cid) {
        Some(component) => (component, Source::Disk),
        None => (compile(engine, disk, cid, wasm)?, Source::Compiled),
    };
    Ok((pre_link(linker, cid, &component)?, source))
}

/// Link `component` and check it is a wasi:http proxy.
fn pre_link(
    linker: &Linker<Host>,
    cid: &Cid,
    component: &Component,
) -> Result<ProxyPre<Host>, RuntimeError> {
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(|error| RuntimeError::Link {
            cid: cid.to_string(),
            reason: format!("{error:#}"),
        })?;
    ProxyPre::new(instance_pre).map_err(|error| RuntimeError::NotHttpProxy {
        cid: cid.to_string(),
        reason: format!("{error:#}"),
    })
}

fn load_from_disk(engine: &Engine, disk: &DiskCache, cid: &Cid) -> Option<Component> {
    let code = disk.read(cid)?;
    // SAFETY: `code` is byte-for-byte what `Component::serialize` produced
    // for an engine with this configuration: the file name carries the
    // engine's compatibility hash, and `DiskCache::read` checked the bytes
    // against the SHA-256 stored when they were written. wasmtime also
    // checks its own header and version before using them.
    match unsafe { Component::deserialize(engine, &code) } {
        Ok(component) => Some(component),
        Err(error) => {
            tracing::warn!(target: "canopy::runtime", %cid, error = %format!("{error:#}"),
                "cannot load compiled function from the cache; recompiling");
            disk.remove(cid);
            None
        }
    }
}

fn compile(
    engine: &Engine,
    disk: &DiskCache,
    cid: &Cid,
    wasm: &[u8],
) -> Result<Component, RuntimeError> {
    let component = Component::new(engine, wasm).map_err(|error| RuntimeError::Compile {
        cid: cid.to_string(),
        reason: format!("{error:#}"),
    })?;
    // The cache only saves time: failing to write it is logged, not fatal.
    match component.serialize() {
        Ok(code) => {
            if let Err(error) = disk.write(cid, &code) {
                tracing::warn!(target: "canopy::runtime", %cid, %error,
                    "cannot cache compiled function on disk; it will be recompiled after a restart");
            }
        }
        Err(error) => {
            tracing::warn!(target: "canopy::runtime", %cid, error = %format!("{error:#}"),
            "cannot serialize compiled function")
        }
    }
    Ok(component)
}

/// The bytes must hash to the CID: the disk cache is keyed by CID, so a
/// mislabelled artifact would otherwise poison it.
fn verify_cid(cid: &Cid, wasm: &[u8]) -> Result<(), RuntimeError> {
    let code = cid.hash().code();
    let hasher = Code::try_from(code).map_err(|_| RuntimeError::UnsupportedCidHash {
        cid: cid.to_string(),
        code,
    })?;
    if hasher.digest(wasm).digest() != cid.hash().digest() {
        return Err(RuntimeError::CidMismatch {
            cid: cid.to_string(),
            hash: format!("{hasher:?}"),
        });
    }
    Ok(())
}

/// Tell "not WebAssembly" and "a core module" apart from a component before
/// wasmtime's parser gives a less direct message.
fn check_header(cid: &Cid, wasm: &[u8]) -> Result<(), RuntimeError> {
    const MAGIC: &[u8] = b"\0asm";
    // The version field: 1 for core modules; components use 0x0d (layer 1).
    const CORE_MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];
    if !wasm.starts_with(MAGIC) {
        return Err(RuntimeError::NotWasm {
            cid: cid.to_string(),
        });
    }
    if wasm.get(4..8) == Some(&CORE_MODULE_VERSION[..]) {
        return Err(RuntimeError::CoreModule {
            cid: cid.to_string(),
        });
    }
    Ok(())
}

/// The CID of `bytes` as CIDv1, raw codec, sha2-256: a CID the runtime
/// can verify (tests and tools use it).
pub fn raw_cid(bytes: &[u8]) -> Cid {
    const RAW_CODEC: u64 = 0x55;
    Cid::new_v1(RAW_CODEC, Code::Sha2_256.digest(bytes))
}
