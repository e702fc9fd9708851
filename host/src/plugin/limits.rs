//! Every per-task limit of the sandbox, and the store data that enforces them.

use std::time::Duration;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

/// Limits for one render. Built from `limits:` in the config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall clock for instantiate + render.
    pub timeout: Duration,
    /// Linear memory the instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Table elements the instance may grow to.
    pub table_elements: usize,
    /// Largest document accepted from the plugin, in bytes.
    pub output_bytes: usize,
}

impl Limits {
    pub fn from_config(c: &crate::config::LimitsConfig) -> Limits {
        Limits {
            timeout: Duration::from_millis(c.timeout_ms),
            memory_bytes: (c.memory_mb as usize) << 20,
            table_elements: 100_000,
            output_bytes: (c.output_mb as usize) << 20,
        }
    }
}

/// Store data of one sandboxed instance: WASI with no authority, and the
/// limiter that remembers which limit was hit.
pub struct TaskState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limiter: Limiter,
    /// Read-only fonts the host shares (the `fonts` import).
    pub fonts: std::sync::Arc<super::fonts::FontIndex>,
}

impl super::bindings::fonts::Host for TaskState {
    fn faces(&mut self) -> Vec<super::bindings::fonts::FontFace> {
        self.fonts.faces()
    }

    fn data(&mut self, id: u32) -> Option<Vec<u8>> {
        self.fonts.data(id).map(|bytes| bytes.as_ref().clone())
    }
}

impl WasiView for TaskState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl TaskState {
    pub fn new(limits: &Limits, fonts: std::sync::Arc<super::fonts::FontIndex>) -> TaskState {
        // No preopened directories, no environment, no arguments, stdin
        // closed, stdout/stderr discarded, every socket address denied and
        // name lookup disabled: the defaults of an empty builder.
        let wasi = WasiCtx::builder().build();
        TaskState {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter::new(limits),
            fonts,
        }
    }
}

/// Refuses growth past the limits and records that it did, so a trap that
/// follows can be classified as out-of-memory.
pub struct Limiter {
    memory_max: usize,
    table_max: usize,
    pub memory_exceeded: bool,
    pub table_exceeded: bool,
}

impl Limiter {
    fn new(limits: &Limits) -> Limiter {
        Limiter {
            memory_max: limits.memory_bytes,
            table_max: limits.table_elements,
            memory_exceeded: false,
            table_exceeded: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_max {
            self.memory_exceeded = true;
            return Ok(false);
        }
        Ok(true)
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
