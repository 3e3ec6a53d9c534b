//! The per-request host state inside a wasmtime `Store`: WASI and wasi:http
//! contexts, the resource table, and the limiter that enforces the
//! function's memory limit.

use std::sync::Arc;

use http::HeaderName;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    DEFAULT_FORBIDDEN_HEADERS, ForbiddenHeaderFilter, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

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
}

impl MemoryLimiter {
    pub fn new(memory_bytes: u64) -> Self {
        let memory_bytes = usize::try_from(memory_bytes).unwrap_or(usize::MAX);
        Self {
            limits: StoreLimitsBuilder::new().memory_size(memory_bytes).build(),
            memory_bytes,
            memory_limit_hit: false,
        }
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
        if !allowed && desired > self.memory_bytes {
            self.memory_limit_hit = true;
        }
        Ok(allowed)
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
