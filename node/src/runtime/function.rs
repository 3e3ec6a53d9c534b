//! A loaded function and how one request runs through it: a fresh instance
//! per request, limited in memory, wall-clock time and (when asked) fuel,
//! with the request body streamed in (up to its limit) and the response
//! body streamed out.

use std::future::Future;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use http::{Request, Response};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wasmtime::component::Resource;
use wasmtime::{PoolConcurrencyLimitError, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};

use super::Shared;
use super::engine::YIELD_INTERVAL_FUEL;
use super::guest_body::GuestBody;
use super::guest_log::{GuestLog, Stream};
use super::host::{Host, HttpHooks, MemoryLimiter};
use super::request_body::{
    BodyLimit, LimitedBody, Overflow, RefusalBody, RequestBody, declared_length, request_body,
};
use super::responses::Failure;
use crate::body::Body;

/// Longest trap reason put in a response; the full error goes to the log.
const MAX_REASON_CHARS: usize = 200;

/// The limits one request to a function runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunctionLimits {
    /// Wall-clock time from the start of the request until the guest has
    /// returned (its whole response streamed).
    pub timeout: Duration,
    /// Largest linear memory the guest may grow to (capped at the runtime's
    /// `max_memory_bytes`).
    pub memory_bytes: u64,
    /// Fuel (about one unit per wasm instruction, instantiation included)
    /// one request may use; `None`: unlimited.
    pub fuel: Option<NonZeroU64>,
    /// The function's own request-body limit (`limits.body`); `None`: the
    /// runtime's default. Capped at the runtime's maximum (see
    /// [`RequestBodyLimits`](super::RequestBodyLimits)).
    pub body_bytes: Option<u64>,
}

impl Default for FunctionLimits {
    /// Two seconds, 64 MiB, unlimited fuel, the runtime's body limit.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            memory_bytes: 64 << 20,
            fuel: None,
            body_bytes: None,
        }
    }
}

/// A compiled, pre-linked wasi:http component, ready to serve requests.
///
/// Its code can leave memory while it is idle ([`Function::unload_code`])
/// and comes back from the compiled-code cache with the next request: the
/// routes keep the `Function`, not its code.
pub struct Function {
    cid: Cid,
    /// `None` while unloaded.
    pre: Mutex<Option<ProxyPre<Host>>>,
    /// Requests taken so far (garbage collection tells idle functions by it).
    uses: AtomicU64,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function")
            .field("cid", &self.cid)
            .finish_non_exhaustive()
    }
}

/// How a guest's run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Returned,
    Failed(Failure),
}

impl Function {
    pub(super) fn new(cid: Cid, pre: ProxyPre<Host>, shared: Arc<Shared>) -> Self {
        Self {
            cid,
            pre: Mutex::new(Some(pre)),
            uses: AtomicU64::new(0),
            shared,
        }
    }

    /// Requests this function has taken.
    pub fn uses(&self) -> u64 {
        self.uses.load(Ordering::Relaxed)
    }

    /// Whether its code is in memory.
    pub fn is_resident(&self) -> bool {
        self.lock_pre().is_some()
    }

    /// Let its code leave memory until the next request, if the
    /// compiled-code cache holds it (else it could not come back without
    /// its WebAssembly). True if it was resident and now is not.
    pub fn unload_code(&self) -> bool {
        if !self.shared.reload.has(&self.cid) {
            return false;
        }
        self.lock_pre().take().is_some()
    }

    fn lock_pre(&self) -> std::sync::MutexGuard<'_, Option<ProxyPre<Host>>> {
        self.pre
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The pre-linked component: resident, or loaded back from the
    /// compiled-code cache (a deserialization, milliseconds).
    async fn ready(&self) -> Result<ProxyPre<Host>, Failure> {
        if let Some(pre) = self.lock_pre().as_ref() {
            return Ok(pre.clone());
        }
        let (reload, cid) = (self.shared.reload.clone(), self.cid);
        let loaded = crate::env::spawn_blocking(move || reload.load(&cid))
            .await
            .map_err(|e| e.to_string())
            .and_then(|loaded| loaded);
        match loaded {
            Ok(pre) => Ok(self.lock_pre().get_or_insert(pre).clone()),
            Err(reason) => Err(Failure::Trap {
                reason: format!("its compiled code could not be loaded back: {reason}"),
            }),
        }
    }

    /// The CID this function was loaded from.
    pub fn cid(&self) -> &Cid {
        &self.cid
    }

    /// Serve one request with a fresh instance of the function, named `name`
    /// in messages and logs.
    ///
    /// Never fails: a trap, a timeout, the memory or fuel limit or a full
    /// instance pool become 500 / 504 / 500 / 503 responses. A request body
    /// over the limit gets 413: at once when its `Content-Length` says so,
    /// else when it goes past the limit while the guest reads it (if the
    /// guest has not answered by then; otherwise the guest's body read
    /// fails and its response breaks off as it decides). The response head is
    /// returned as soon as the guest sets it; its body streams while the
    /// guest keeps running, and breaks off (rather than ending) if the guest
    /// then fails. The URI's scheme is passed on when the request carries
    /// one (HTTP/2, or a gateway that rewrote the URI), else `http`.
    ///
    /// Must be called inside a tokio runtime (the guest runs on a task).
    pub async fn handle<B>(
        &self,
        request: Request<B>,
        limits: &FunctionLimits,
        name: &str,
    ) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let memory_bytes = limits.memory_bytes.min(self.shared.max_memory_bytes);
        let timeout = limits.timeout;
        let fuel = limits.fuel;
        let deadline = tokio::time::Instant::now() + timeout;
        let name: Arc<str> = Arc::from(name);

        // Refused before an instance is taken or a byte of the body read.
        let body_limit = self.shared.request_body.resolve(limits.body_bytes);
        if let Some(size) = declared_length(request.headers())
            && size > body_limit.bytes
        {
            let rest = request_body(request.into_body());
            return too_large(body_limit, Some(size), Some(rest), deadline, &name);
        }
        let overflow = Overflow::default();
        let request = request
            .map(|body| LimitedBody::new(request_body(body), body_limit.bytes, overflow.clone()));
        let refuse_overflow = || too_large(body_limit, None, overflow.take_rest(), deadline, &name);

        self.uses.fetch_add(1, Ordering::Relaxed);
        let pre = match self.ready().await {
            Ok(pre) => pre,
            Err(failure) => return failure.response(&name),
        };

        let mut store = match self.new_store(&name, memory_bytes, fuel, deadline) {
            Ok(store) => store,
            Err(failure) => return failure.response(&name),
        };
        let (response_tx, response_rx) = oneshot::channel();
        let (guest_request, response_out) = match hand_over(&mut store, request, response_tx) {
            Ok(resources) => resources,
            Err(failure) => return failure.response(&name),
        };

        let task_name = name.clone();
        let mut task = GuestTask::spawn(async move {
            // The epoch callback traps a running guest at the deadline; this
            // also ends one that is blocked in the host (on a slow client).
            let run = tokio::time::timeout(
                timeout,
                run_guest(&pre, &mut store, guest_request, response_out),
            )
            .await;
            match run {
                Err(_elapsed) => Outcome::Failed(Failure::Timeout { timeout }),
                Ok(result) => classify(
                    result,
                    store.data(),
                    &task_name,
                    timeout,
                    memory_bytes,
                    fuel,
                ),
            }
        });

        // Whatever the guest made of a body that broke off at the limit
        // (an error, a trap, its own response) before it answered, the
        // client is told the body was too large.
        match tokio::time::timeout_at(deadline, response_rx).await {
            Ok(Ok(Ok(_response))) if overflow.happened() => {
                task.abort();
                refuse_overflow()
            }
            Ok(Ok(Ok(response))) => response.map(|body: HyperOutgoingBody| {
                Body::new(GuestBody::new(body, task, name.to_string()))
            }),
            Ok(Ok(Err(_code))) if overflow.happened() => {
                task.detach();
                refuse_overflow()
            }
            Ok(Ok(Err(code))) => {
                // Let the guest finish on its own; it has answered.
                task.detach();
                Failure::GuestError {
                    code: format!("{code:?}"),
                }
                .response(&name)
            }
            // The guest dropped its response-outparam: it is done, one way
            // or another.
            Ok(Err(_closed)) => match std::future::poll_fn(|cx| task.poll_outcome(cx)).await {
                _ if overflow.happened() => refuse_overflow(),
                Outcome::Returned => Failure::NoResponse.response(&name),
                Outcome::Failed(failure) => failure.response(&name),
            },
            Err(_elapsed) => {
                task.abort();
                Failure::Timeout { timeout }.response(&name)
            }
        }
    }

    /// Instantiate once without a request, so the first real request finds
    /// a pool slot with its memory image mapped and its pages resident (the
    /// cold-start cost after a deploy or a restart). Runs no guest code
    /// beyond instantiation; a failure only loses the warm-up.
    pub async fn warm_up(&self) {
        let name: Arc<str> = Arc::from("warm-up");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let Ok(pre) = self.ready().await else {
            return;
        };
        let Ok(mut store) = self.new_store(&name, self.shared.max_memory_bytes, None, deadline)
        else {
            return;
        };
        if let Err(error) = pre.instantiate_async(&mut store).await {
            tracing::debug!(cid = %self.cid, error = %error, "warm-up instantiation failed");
        }
    }

    fn new_store(
        &self,
        name: &Arc<str>,
        memory_bytes: u64,
        fuel: Option<NonZeroU64>,
        deadline: tokio::time::Instant,
    ) -> Result<Store<Host>, Failure> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.env("CANOPY_FUNCTION", name)
            .stdout(GuestLog::new(name.clone(), Stream::Stdout))
            .stderr(GuestLog::new(name.clone(), Stream::Stderr))
            // No raw sockets; wasi:http is the way out.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        self.shared.guest.configure(&mut wasi);
        let host = Host {
            wasi: wasi.build(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            table: wasmtime::component::ResourceTable::new(),
            hooks: HttpHooks::default(),
            limiter: MemoryLimiter::new(memory_bytes, self.shared.budget.clone()),
            deadline_exceeded: false,
        };
        let mut store = Store::new(&self.shared.engine, host);
        store.limiter(|host| &mut host.limiter);
        // Fuel paces the guest (see `engine.rs`) and, when the function has
        // a fuel limit, bounds it: out of fuel, the guest traps.
        store
            .set_fuel(fuel.map_or(u64::MAX, NonZeroU64::get))
            .and_then(|()| store.fuel_async_yield_interval(Some(YIELD_INTERVAL_FUEL)))
            .map_err(|error| Failure::Trap {
                reason: format!("the runtime could not pace it: {}", short_reason(&error)),
            })?;
        // Every epoch tick: past the deadline, trap; otherwise yield to the
        // executor, so a spinning guest shares its worker thread.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut context| {
            if tokio::time::Instant::now() >= deadline {
                context.data_mut().deadline_exceeded = true;
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        Ok(store)
    }
}

/// The 413 for a request body over `limit` (`size_bytes` when declared),
/// reading the rest of that body before its own body ends (see
/// [`RefusalBody`]).
fn too_large(
    limit: BodyLimit,
    size_bytes: Option<u64>,
    rest: Option<RequestBody>,
    deadline: tokio::time::Instant,
    name: &str,
) -> Response<Body> {
    let failure = Failure::BodyTooLarge { limit, size_bytes };
    let message = format!("{}\n", failure.message(name));
    failure
        .response(name)
        .map(|_| Body::new(RefusalBody::new(message, rest, deadline)))
}

/// Turn the hyper request into the guest's `incoming-request` and create the
/// `response-outparam` the guest answers through.
fn hand_over<B>(
    store: &mut Store<Host>,
    request: Request<B>,
    response_tx: oneshot::Sender<Result<hyper::Response<HyperOutgoingBody>, ErrorCode>>,
) -> Result<
    (
        Resource<HostIncomingRequest>,
        Resource<HostResponseOutparam>,
    ),
    Failure,
>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let scheme = match request.uri().scheme_str() {
        Some("https") => Scheme::Https,
        _ => Scheme::Http,
    };
    if request.uri().authority().is_none() && !request.headers().contains_key(http::header::HOST) {
        return Err(Failure::BadRequest {
            reason: "it has no Host header; send one (HTTP/1.1 requires it)".to_string(),
        });
    }
    let host = store.data_mut();
    host.hooks.admit_host_header = true;
    let guest_request = host.http().new_incoming_request(scheme, request);
    host.hooks.admit_host_header = false;
    let guest_request = guest_request.map_err(|error| Failure::BadRequest {
        reason: short_reason(&error),
    })?;
    let response_out = host
        .http()
        .new_response_outparam(response_tx)
        .map_err(|error| Failure::Trap {
            reason: short_reason(&error),
        })?;
    Ok((guest_request, response_out))
}

async fn run_guest(
    pre: &ProxyPre<Host>,
    store: &mut Store<Host>,
    request: Resource<HostIncomingRequest>,
    response_out: Resource<HostResponseOutparam>,
) -> wasmtime::Result<()> {
    let proxy = pre.instantiate_async(&mut *store).await?;
    proxy
        .wasi_http_incoming_handler()
        .call_handle(&mut *store, request, response_out)
        .await
}

/// What a finished guest run means for the client.
fn classify(
    result: wasmtime::Result<()>,
    host: &Host,
    name: &str,
    timeout: Duration,
    memory_bytes: u64,
    fuel: Option<NonZeroU64>,
) -> Outcome {
    let Err(error) = result else {
        return Outcome::Returned;
    };
    if let Some(exit) = find_cause::<I32Exit>(&error)
        && exit.0 == 0
    {
        return Outcome::Returned;
    }
    let failure = if host.deadline_exceeded {
        Failure::Timeout { timeout }
    } else if host.limiter.memory_limit_hit {
        Failure::MemoryLimit { memory_bytes }
    } else if let Some(fuel) = fuel
        && find_cause::<Trap>(&error) == Some(&Trap::OutOfFuel)
    {
        Failure::FuelLimit { fuel: fuel.get() }
    } else if host.limiter.budget_hit {
        Failure::MemoryBudget {
            budget_bytes: host.limiter.budget_bytes(),
        }
    } else if let Some(limit) = find_cause::<PoolConcurrencyLimitError>(&error) {
        Failure::PoolExhausted {
            reason: limit.to_string(),
        }
    } else if let Some(exit) = find_cause::<I32Exit>(&error) {
        Failure::Trap {
            reason: format!("it exited with status {}", exit.0),
        }
    } else if let Some(trap) = find_cause::<Trap>(&error) {
        Failure::Trap {
            reason: trap.to_string(),
        }
    } else {
        Failure::Trap {
            reason: short_reason(&error),
        }
    };
    tracing::warn!(target: "canopy::runtime", function = name, error = ?error, "function failed");
    Outcome::Failed(failure)
}

fn find_cause<E: std::error::Error + 'static>(error: &wasmtime::Error) -> Option<&E> {
    error.chain().find_map(|cause| cause.downcast_ref::<E>())
}

/// The first line of an error's outermost message, bounded in length.
fn short_reason(error: &wasmtime::Error) -> String {
    let text = error.to_string();
    let line = text.lines().next().unwrap_or_default();
    let mut reason: String = line.chars().take(MAX_REASON_CHARS).collect();
    if line.chars().count() > MAX_REASON_CHARS {
        reason.push('…');
    }
    reason
}

/// The task a guest runs on. Aborted when dropped, so a guest whose client
/// has gone away stops (and frees its instance slot) at once.
pub struct GuestTask(Option<JoinHandle<Outcome>>);

impl GuestTask {
    fn spawn(run: impl Future<Output = Outcome> + Send + 'static) -> Self {
        Self(Some(tokio::spawn(run)))
    }

    /// Stop the guest now.
    pub fn abort(&self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }

    /// Let the guest run to its own end (still bounded by its timeout).
    fn detach(mut self) {
        // Dropping a tokio `JoinHandle` detaches its task.
        drop(self.0.take());
    }

    /// Poll for how the guest ended.
    pub fn poll_outcome(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        let Some(task) = self.0.as_mut() else {
            return Poll::Ready(Outcome::Failed(Failure::Trap {
                reason: "it was detached".to_string(),
            }));
        };
        Pin::new(task).poll(cx).map(|joined| match joined {
            Ok(outcome) => outcome,
            Err(error) if error.is_cancelled() => Outcome::Failed(Failure::Trap {
                reason: "it was stopped".to_string(),
            }),
            Err(error) => Outcome::Failed(Failure::Trap {
                reason: format!("the host task running it failed: {error}"),
            }),
        })
    }
}

impl Drop for GuestTask {
    fn drop(&mut self) {
        self.abort();
    }
}
