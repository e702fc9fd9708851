//! Every per-task limit of the sandbox, and the store data that enforces them.

use std::sync::Arc;
use std::time::Duration;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

use super::fonts::FontIndex;
use super::stdio::CapturePipe;
use crate::config::{LimitsConfig, LimitsOverride};

/// Limits for one render: the `limits:` section, overridden per plugin by
/// `plugins.limits.<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall clock for instantiate + render.
    pub timeout: Duration,
    /// Linear memory the instance may grow to, in bytes: all its memories
    /// together.
    pub memory_bytes: usize,
    /// Table elements the instance may grow to.
    pub table_elements: usize,
    /// Largest document accepted from the plugin, in bytes.
    pub output_bytes: usize,
    /// Instructions budget (wasmtime fuel); `None` = unmetered.
    pub fuel: Option<u64>,
    /// Guest stdout and stderr kept per task, each, in bytes.
    pub stdio_bytes: usize,
}

impl Limits {
    pub fn from_config(c: &LimitsConfig) -> Limits {
        Limits {
            timeout: Duration::from_millis(c.timeout_ms),
            memory_bytes: (c.memory_mb as usize) << 20,
            table_elements: 100_000,
            output_bytes: (c.output_mb as usize) << 20,
            fuel: c.fuel,
            stdio_bytes: c.stdio_kb << 10,
        }
    }

    pub fn with(mut self, o: &LimitsOverride) -> Limits {
        if let Some(ms) = o.timeout_ms {
            self.timeout = Duration::from_millis(ms);
        }
        if let Some(mb) = o.memory_mb {
            self.memory_bytes = (mb as usize) << 20;
        }
        if let Some(mb) = o.output_mb {
            self.output_bytes = (mb as usize) << 20;
        }
        if let Some(fuel) = o.fuel {
            self.fuel = Some(fuel);
        }
        self
    }

    /// These limits, tightened (never loosened) by a task's caps.
    pub fn capped(mut self, caps: Caps) -> Limits {
        if let Some(t) = caps.timeout {
            self.timeout = self.timeout.min(t);
        }
        if let Some(m) = caps.memory_bytes {
            self.memory_bytes = self.memory_bytes.min(m);
        }
        self
    }
}

/// Per-task tightening of a plugin's limits, e.g. a tenant's
/// `limits.timeout_ms` / `limits.memory_mb`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    pub timeout: Option<Duration>,
    pub memory_bytes: Option<usize>,
}

impl Caps {
    pub fn from_tenant(l: &crate::config::TenantLimits) -> Caps {
        Caps {
            timeout: l.timeout_ms.map(Duration::from_millis),
            memory_bytes: l.memory_mb.map(|mb| (mb as usize) << 20),
        }
    }
}

/// Store data of one sandboxed instance: WASI with no authority, captured
/// stdio, the fonts the host shares, and the limiter that remembers which
/// limit was hit.
pub struct TaskState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limiter: Limiter,
    pub fonts: Arc<FontIndex>,
    /// The task's template bundle directory (the `bundle` import).
    pub bundle: Option<std::path::PathBuf>,
    pub stdout: CapturePipe,
    pub stderr: CapturePipe,
}

impl WasiView for TaskState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// `types` declares no functions; linking it needs this (empty) impl.
impl super::bindings::export_host::plugin::types::Host for TaskState {}

impl super::bindings::bundle::Host for TaskState {
    fn read(&mut self, name: String) -> Option<Vec<u8>> {
        // A file larger than the sandbox's memory could never be used.
        super::bundle::read(self.bundle.as_deref()?, &name, self.limiter.memory_max)
    }
}

impl super::bindings::fonts::Host for TaskState {
    fn faces(&mut self) -> Vec<super::bindings::fonts::FontFace> {
        self.fonts.faces()
    }

    fn data(&mut self, id: u32) -> Option<Vec<u8>> {
        self.fonts.data(id).map(|bytes| bytes.as_ref().clone())
    }
}

impl TaskState {
    pub fn new(limits: &Limits, fonts: Arc<FontIndex>) -> TaskState {
        let stdout = CapturePipe::new(limits.stdio_bytes);
        let stderr = CapturePipe::new(limits.stdio_bytes);
        // No preopened directories, no environment, no arguments, stdin
        // closed, every socket address denied and name lookup disabled (the
        // defaults of an empty builder); stdout/stderr captured and bounded.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        TaskState {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter::new(limits),
            fonts,
            bundle: None,
            stdout,
            stderr,
        }
    }
}

/// Refuses growth past the limits and records that it did, so a trap that
/// follows can be classified as out-of-memory; counts the linear memory it
/// granted, the task's memory high-water mark. The memory limit caps the
/// sum of every linear memory of the instance, not each one.
pub struct Limiter {
    memory_max: usize,
    table_max: usize,
    pub memory_exceeded: bool,
    pub table_exceeded: bool,
    /// Linear memory granted to the instance so far, every memory together
    /// (creation counts as growth from 0). Wasm memories never shrink, so
    /// this is the peak.
    pub memory_peak: usize,
    /// The last growth granted, taken back if the engine then fails it.
    last_grant: usize,
}

impl Limiter {
    fn new(limits: &Limits) -> Limiter {
        Limiter {
            memory_max: limits.memory_bytes,
            table_max: limits.table_elements,
            memory_exceeded: false,
            table_exceeded: false,
            memory_peak: 0,
            last_grant: 0,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The cap is the instance's: a component may hold several linear
        // memories (one per core module, up to the pool's per-component
        // limit), and they share it.
        let grant = desired.saturating_sub(current);
        if self.memory_peak.saturating_add(grant) > self.memory_max {
            self.memory_exceeded = true;
            return Ok(false);
        }
        self.last_grant = grant;
        self.memory_peak += grant;
        Ok(true)
    }

    /// Granted above but refused by the engine (e.g. a pool slot is
    /// smaller): the memory did not grow.
    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_peak -= std::mem::take(&mut self.last_grant);
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_max {
            self.table_exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        64
    }
    fn tables(&self) -> usize {
        64
    }
    fn memories(&self) -> usize {
        16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Engine, Module, Store};

    fn limits(memory_mb: usize) -> Limits {
        Limits {
            timeout: Duration::from_secs(5),
            memory_bytes: memory_mb << 20,
            table_elements: 1000,
            output_bytes: 1 << 20,
            fuel: None,
            stdio_bytes: 1024,
        }
    }

    /// A core module with `n` memories of `mb` MiB each, and a function
    /// that grows memory `i` by one page (returns -1 when refused).
    fn memories(n: usize, mb: usize) -> String {
        let pages = mb * 16;
        let mems: String = (0..n).map(|_| format!("(memory {pages}) ")).collect();
        let grows: String = (0..n)
            .map(|i| {
                format!("(func (export \"grow{i}\") (result i32) (memory.grow {i} (i32.const 1)))")
            })
            .collect();
        format!("(module {mems} {grows})")
    }

    fn instantiate(
        wat: &str,
        limit_mb: usize,
    ) -> (Store<Limiter>, wasmtime::Result<wasmtime::Instance>) {
        let engine = Engine::default();
        let module = Module::new(&engine, wat).expect("module");
        let mut store = Store::new(&engine, Limiter::new(&limits(limit_mb)));
        store.limiter(|l| l);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]);
        (store, instance)
    }

    #[test]
    fn the_memory_limit_is_for_all_memories_together() {
        // One memory of 20 MiB fits 32 MiB; two (40 MiB) do not, although
        // each alone would.
        let (store, one) = instantiate(&memories(1, 20), 32);
        assert!(one.is_ok());
        assert_eq!(store.data().memory_peak, 20 << 20);
        let (store, two) = instantiate(&memories(2, 20), 32);
        assert!(two.is_err(), "40 MiB in two memories passed a 32 MiB cap");
        assert!(store.data().memory_exceeded);
        assert!(store.data().memory_peak <= 32 << 20);
    }

    #[test]
    fn growth_of_any_memory_counts_against_the_total() {
        // Two memories of 16 MiB fill a 32 MiB cap: neither may grow.
        let (mut store, instance) = instantiate(&memories(2, 16), 32);
        let instance = instance.expect("32 MiB fits");
        for i in 0..2 {
            let grow = instance
                .get_typed_func::<(), i32>(&mut store, &format!("grow{i}"))
                .expect("grow");
            assert_eq!(
                grow.call(&mut store, ()).expect("call"),
                -1,
                "memory {i} grew past the total"
            );
        }
        assert!(store.data().memory_exceeded);
        assert_eq!(store.data().memory_peak, 32 << 20);
        // Below the cap, growth is granted and counted.
        let (mut store, instance) = instantiate(&memories(2, 8), 32);
        let instance = instance.expect("16 MiB fits");
        let grow = instance
            .get_typed_func::<(), i32>(&mut store, "grow1")
            .expect("grow");
        assert_eq!(grow.call(&mut store, ()).expect("call"), 128);
        assert_eq!(store.data().memory_peak, (16 << 20) + 65536);
        assert!(!store.data().memory_exceeded);
    }
}
