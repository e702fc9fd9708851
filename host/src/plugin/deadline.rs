//! Every call into a guest ends at its task's deadline, wherever the guest
//! is. Guests run as async wasmtime calls (WASI linked async): a guest
//! busy in its own code is stopped by the epoch deadline (a trap, see
//! [`super::TICK`]); a guest blocked in a host call (a sleep: a
//! monotonic-clock pollable it polls; any other blocking WASI call) is a
//! pending future, dropped here when the timeout elapses, which unwinds the
//! guest's stack. The caller's thread drives the call (a render thread, or
//! the plugin loader's), on the Tokio runtime it runs under, else on
//! wasmtime-wasi's own.

use std::future::Future;
use std::time::Duration;

/// The deadline passed before the call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the call did not end within {0:?}")]
pub struct Elapsed(pub Duration);

/// Run `call` to completion on this thread, or stop it after `timeout`.
/// Blocking. On a thread that drives a Tokio runtime (the CLI loads and
/// renders from its async `main`), where blocking on a runtime would
/// panic, the call runs on a thread of its own, joined here.
pub fn within<T: Send>(
    timeout: Duration,
    call: impl Future<Output = T> + Send,
) -> Result<T, Elapsed> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return std::thread::scope(|s| {
            s.spawn(move || drive(timeout, call))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
    }
    drive(timeout, call)
}

fn drive<T>(timeout: Duration, call: impl Future<Output = T>) -> Result<T, Elapsed> {
    wasmtime_wasi::runtime::in_tokio(async move {
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| Elapsed(timeout))
    })
}
