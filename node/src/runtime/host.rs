//! The per-request host state inside a wasmtime `Store`: WASI and wasi:http
//! contexts, the resource table, and the limiter that enforces the
//! function's memory limit and takes its memory from the node's budget.

use std::sync::Arc;

use http::HeaderName;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    DEFAULT_FORBIDDEN_HEADERS, ForbiddenHeaderFilter, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use super::budget::MemoryBudget;

/// The `T` of every `Store<T>` the runtime creates: one per request.
pub struct Host {
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub table: ResourceTable,
    pub hooks: HttpHooks,
    pub limiter: MemoryLimiter,
    /// Set by the epoch callback when the wall-clock deadline passed.
    pub deadline_exceeded: bool,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// wasi:http hooks: the defaults, except that the `Host` header of the
/// *incoming* request reaches the guest (`wasmtime serve` strips it; a
/// function routed by host name needs it).
#[derive(Debug, Default)]
pub struct HttpHooks {
    /// True only while the incoming request is handed to the guest: Host
    /// stays forbidden in everything the guest builds itself.
    pub admit_host_header: bool,
}

impl WasiHttpHooks for HttpHooks {
    /// Functions may not make outbound HTTP requests: like Spin's empty
    /// `allowed_outbound_hosts`, the default denies every destination, so a
    /// function cannot reach the node's admin API or anything else on the
    /// host's network. (An allow-list per function is the way to open it.)
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        tracing::warn!(target: "canopy::guest", uri = %request.uri(), "outbound HTTP request denied");
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }

    fn forbidden_header_filter(&mut self) -> ForbiddenHeaderFilter {
        if self.admit_host_header {
            Arc::new(|name: &HeaderName| {
                name != http::header::HOST && DEFAULT_FORBIDDEN_HEADERS.contains(name)
            })
        } else {
            Arc::new(|name: &HeaderName| DEFAULT_FORBIDDEN_HEADERS.contains(name))
        }
    }
}

/// wasmtime's [`StoreLimits`] plus a record of whether the memory limit was
/// what stopped the guest, so the response can say so.
pub struct MemoryLimiter {
    limits: StoreLimits,
    memory_bytes: usize,
    /// Set when a memory growth was refused for exceeding the limit.
    pub memory_limit_hit: bool,
    /// The node-wide budget every growth is also taken from.
    budget: Arc<MemoryBudget>,
    /// What this instance holds of the budget (given back on drop).
    charged_bytes: u64,
    /// Set when a growth within the limit was refused because the node's
    /// budget was in use.
    pub budget_hit: bool,
}

impl MemoryLimiter {
    pub fn new(memory_bytes: u64, budget: Arc<MemoryBudget>) -> Self {
        let memory_bytes = usize::try_from(memory_bytes).unwrap_or(usize::MAX);
        Self {
            limits: StoreLimitsBuilder::new().memory_size(memory_bytes).build(),
            memory_bytes,
            memory_limit_hit: false,
            budget,
            charged_bytes: 0,
            budget_hit: false,
        }
    }
}

impl MemoryLimiter {
    /// The node's whole budget, for messages.
    pub fn budget_bytes(&self) -> u64 {
        self.budget.budget_bytes()
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.budget.give_back(self.charged_bytes);
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if !allowed {
            if desired > self.memory_bytes {
                self.memory_limit_hit = true;
            }
            return Ok(false);
        }
        let growth = desired.saturating_sub(current) as u64;
        if !self.budget.try_take(growth) {
            self.budget_hit = true;
            return Ok(false);
        }
        self.charged_bytes += growth;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}
