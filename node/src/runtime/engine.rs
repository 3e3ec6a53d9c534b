//! The wasmtime engine every function runs on, and the epoch ticker that
//! bounds how long guest code may run without the host looking.
//!
//! Why fuel as well as epochs: the epoch ticker is a tokio task (time comes
//! from tokio's clock), so it only runs when a worker thread is free. Guests
//! that spin on every worker would starve it, no epoch would pass, and none
//! of them would ever yield: a deadlock. Fuel metering makes every guest
//! yield after a fixed amount of work ([`YIELD_INTERVAL_FUEL`]), whatever
//! the clock does, so the ticker (and every other task) keeps running and
//! the epoch deadline can do its job. Fuel is a limit only for a function
//! with `limits.fuel` (its store starts with that much, see `function.rs`);
//! every other store gets `u64::MAX`.

use std::time::Duration;

use tokio::task::AbortHandle;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig, Strategy,
};

use super::{RuntimeConfig, RuntimeError};

/// How the engine allocates instances: reported so operators can tell
/// whether the pool could be reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocator {
    /// A pre-reserved pool sized from [`RuntimeConfig`].
    Pooling,
    /// Allocation per instance (the pool could not be reserved).
    OnDemand,
}

/// Fuel (roughly, wasm instructions) a guest runs between yields to the
/// executor: about a millisecond of work.
pub const YIELD_INTERVAL_FUEL: u64 = 1_000_000;

/// Core instances a component instance may need: std Rust components have
/// a handful (the program plus wit-component's shim modules); other
/// toolchains more.
const CORE_INSTANCES_PER_COMPONENT: u32 = 8;
/// Linear memories per component (the program's, plus an adapter's).
const MEMORIES_PER_COMPONENT: u32 = 2;
/// Tables per component (each core module and shim has one).
const TABLES_PER_COMPONENT: u32 = 8;
/// Per-instance metadata limit: large guests (CPython, ~18 MB) have many
/// functions and globals; the defaults (1 MiB) are too small for them.
const MAX_INSTANCE_METADATA_BYTES: usize = 16 << 20;

/// Per linear memory, how many bytes a freed pool slot keeps mapped and
/// resets in place for the next instance (a std Rust guest touches well
/// under this per request). Larger memories are partly decommitted as usual.
const KEEP_RESIDENT_MEMORY_BYTES: usize = 2 << 20;
/// Per table, the same (function tables are a few KiB).
const KEEP_RESIDENT_TABLE_BYTES: usize = 64 << 10;
/// Free slots kept warm for the component that last used them. Each keeps
/// its resident bytes (above), so this bounds what idle functions hold:
/// the slots ever used are the peak of concurrent instances plus this
/// (wasmtime's default, 100, lets a node with many functions keep a
/// resident slot for each of a hundred idle ones).
const UNUSED_WARM_SLOTS: u32 = 16;

/// Build the engine: Cranelift, epoch interruption, and the pooling
/// allocator when it can be reserved (else the on-demand allocator).
pub fn build(config: &RuntimeConfig) -> Result<(Engine, Allocator), RuntimeError> {
    match Engine::new(&base_config(Some(pooling(config)))) {
        Ok(engine) => Ok((engine, Allocator::Pooling)),
        Err(pool_error) => {
            tracing::warn!(
                target: "canopy::runtime",
                error = %pool_error,
                max_instances = config.max_instances,
                max_memory_bytes = config.max_memory_bytes,
                "cannot reserve the instance pool; falling back to on-demand allocation \
                 (lower max_instances or max_memory_bytes, or raise the address-space limit)"
            );
            let engine = Engine::new(&base_config(None)).map_err(|error| RuntimeError::Engine {
                reason: format!("{error:#}"),
            })?;
            Ok((engine, Allocator::OnDemand))
        }
    }
}

fn base_config(pool: Option<PoolingAllocationConfig>) -> Config {
    let mut wasmtime_config = Config::new();
    wasmtime_config
        .strategy(Strategy::Cranelift)
        .cranelift_opt_level(OptLevel::Speed)
        .wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(true)
        .parallel_compilation(true);
    if let Some(pool) = pool {
        wasmtime_config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    } else {
        wasmtime_config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    }
    wasmtime_config
}

fn pooling(config: &RuntimeConfig) -> PoolingAllocationConfig {
    let instances = config.max_instances.max(1);
    let max_memory_bytes = usize::try_from(config.max_memory_bytes).unwrap_or(usize::MAX);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .total_memories(instances.saturating_mul(MEMORIES_PER_COMPONENT))
        .total_tables(instances.saturating_mul(TABLES_PER_COMPONENT))
        .total_stacks(instances)
        .max_memory_size(max_memory_bytes)
        .max_core_instance_size(MAX_INSTANCE_METADATA_BYTES)
        .max_component_instance_size(MAX_INSTANCE_METADATA_BYTES)
        .max_memories_per_component(MEMORIES_PER_COMPONENT * 2)
        .max_tables_per_component(TABLES_PER_COMPONENT * 4)
        // Reset a used slot by rewriting its dirty pages (found with
        // Linux's PAGEMAP_SCAN where the kernel has it) instead of
        // `madvise(DONTNEED)`: that syscall shoots down the TLB on every
        // core and makes the next instance fault every page in again. The
        // profile of a hello function under load had ~15% of its time there.
        .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY_BYTES)
        .table_keep_resident(KEEP_RESIDENT_TABLE_BYTES)
        .max_unused_warm_slots(UNUSED_WARM_SLOTS);
    pool
}

/// Advances the engine's epoch every `epoch_tick` on tokio's clock, so
/// running guests reach their yield and deadline checks. Stops when dropped.
#[derive(Debug)]
pub struct EpochTicker {
    task: AbortHandle,
}

impl EpochTicker {
    /// Spawn the ticker on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime (as `tokio::spawn` does).
    pub fn spawn(engine: Engine, epoch_tick: Duration) -> Self {
        debug_assert!(!epoch_tick.is_zero(), "a zero epoch tick would spin");
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(epoch_tick);
            // After a stall, tick once rather than in a burst: a burst would
            // only make running guests yield several times in a row.
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                engine.increment_epoch();
            }
        });
        Self {
            task: task.abort_handle(),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.task.abort();
    }
}
