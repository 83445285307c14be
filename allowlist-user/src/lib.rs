//! The allowlist agent: keeps an XDP source-IP allowlist in sync with the IP ranges
//! that webhook providers publish, and reports what it does.
//!
//! - `config`: the TOML file, parsed and validated.
//! - `presets`: built-in providers (Intercom, Freshworks, Stripe, GitHub, ...).
//! - `source`: one module per document format (JSON, text, static lists).
//! - `fetch`: HTTPS retrieval with conditional GET, retries and limits.
//! - `dns`: the A and AAAA records of a `dns` source's name.
//! - `prefixes`: validation of entries, the merged set, and diffs.
//! - `state`: the last good set of every source, kept on disk.
//! - `guards`: the fail-safe guards (serial, empty, shrink, capacity).
//! - `history`: every applied, refused or failed update, and the latest refused one.
//! - `refresh`: one refresh cycle, judged by the guards.
//! - `senders`: who a denied source is (the known-sender index); `denied`: the
//!   denied sources the datapath records, merged, bounded and kept in `state_dir`.
//! - `datapath`: loading, attaching, pinning and syncing the XDP program's maps.
//! - `link_events`: rtnetlink notifications that wake the agent's link check.
//! - `metrics`, `cli`, `agent`: what the operator sees and runs.
#![cfg_attr(
    test,
    allow(
        unused_crate_dependencies,
        reason = "the dev-dependencies serve the integration tests"
    )
)]

// Public: what the binary (`main.rs`), the verdict and fetch tests, the deployment
// tests and the benchmarks use. The rest is the agent's own.
pub mod agent;
pub mod cli;
pub mod commands;
pub mod config;
mod control;
pub mod datapath;
mod denied;
mod dns;
pub mod fetch;
mod guards;
mod history;
mod link_events;
mod metrics;
pub mod observe;
mod prefixes;
pub mod presets;
pub mod refresh;
mod senders;
pub mod source;
mod state;
mod status;
