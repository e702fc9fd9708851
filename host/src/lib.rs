//! export-host: templates + JSON → documents, queued and rendered in
//! sandboxed WebAssembly format plugins.
//!
//! # Layout
//!
//! Data flows one way: HTTP → queue → worker → plugin sandbox → store.
//!
//! * [`config`] — the YAML config (with the design document's `rocketmq:`
//!   block), `deny_unknown_fields`, and `validate()` naming the bad key.
//! * [`ids`] — validated ids (task, template, tenant, file name): nothing
//!   unchecked reaches a file path.
//! * [`auth`] — API keys (stored hashed) → tenant or admin; the keys file.
//! * [`quota`] — admission at submit: per-tenant rate and queued limits,
//!   global backpressure.
//! * [`api`] — axum routes, the `{success, data, message}` envelope and the
//!   one error type that maps to status codes.
//! * [`queue`] — the `TaskQueue` trait and its backends (`embedded`, durable
//!   SQLite; `rocketmq`, Apache RocketMQ).
//! * [`worker`] — the queue's handler: one task in, a result or a failure out.
//! * [`status`] — task status events from the worker to the task store:
//!   direct in one process, over the RocketMQ status topic between roles.
//! * [`plugin`] — the wasmtime sandbox: loading and hot reload, limits,
//!   fault classes, fonts, captured stdio.
//! * [`reconcile`] — the task store's check on the queue: an accepted task
//!   that shows no progress for too long is published again.
//! * [`store`] — task records, result files and template bundles.
//! * [`db`] — SQLite with a group-committing writer thread (shared by the
//!   embedded queue and the task store).
//! * [`telemetry`] — Prometheus metrics and the sliding window behind
//!   `/api/v1/queue/metrics`.
//! * [`server`] — wires everything for `export-host serve`.
//! * [`shutdown`] — the one shutdown signal.
//! * [`client`] — the command-line client of a running server (`submit`,
//!   `tasks show|watch`): HTTP only, no access to the service's internals.
//! * [`config_check`] — `config check`: the start-up loader and validation,
//!   the effective settings printed with secrets redacted.

// rocketmq-rust's client futures and types nest deeper than the default
// limit of 128 (its own crates and examples raise it the same way).
#![recursion_limit = "256"]

pub mod api;
pub mod auth;
pub mod client;
pub mod config;
pub mod config_check;
pub mod db;
pub mod ids;
pub mod plugin;
pub mod queue;
pub mod quota;
pub mod reconcile;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod worker;
