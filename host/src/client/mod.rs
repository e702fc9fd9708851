//! The command-line client of a running export-host server
//! (`export-host submit`, `export-host tasks show|watch`).
//!
//! It talks to the server only through the public HTTP API, like any other
//! client: nothing here touches the queue, the store or the plugins.
//!
//! * [`http`] — [`ApiClient`]: the requests, the `{success, data, message}`
//!   envelope, and the task status document as the client sees it.
//! * [`rows`] — reading a JSON Lines batch into rows, and grouping rows into
//!   batch requests (same template, format and priority; at most
//!   [`MAX_BATCH`](crate::api::export::MAX_BATCH) each).
//! * [`submit`] — submitting rows, waiting until every task is final and
//!   downloading the results.
//! * [`progress`] — a progress bar with rate and ETA on a terminal, periodic
//!   plain lines otherwise.
//! * [`summary`] — the outcome of a run: the table, failures grouped by
//!   reason, `summary.json`.
//! * [`tasks`] — `tasks show` (one status, pretty-printed) and `tasks watch`
//!   (live counts from the monitoring endpoints).

pub mod http;
pub mod progress;
pub mod rows;
pub mod submit;
pub mod summary;
pub mod tasks;

pub use http::{ApiClient, ClientError};

/// Server used when neither `--server` nor `EXPORT_HOST_URL` is given: the
/// default `server.listen` address.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8000";
