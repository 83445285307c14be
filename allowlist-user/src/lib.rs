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

mod agent;
mod cli;
mod config;
mod datapath;
mod denied;
#[cfg(test)]
mod file_formats;

mod observe;
mod policy;
mod prefixes;
mod sources;
mod store;

/// What the integration tests and the benchmarks use; nothing else is public.
#[doc(inline)]
pub use crate::{
    config::{
        Config, DEFAULT_PIN_DIR, DEFAULT_STATE_DIR, DEFAULT_WATCH_RATE, Location,
        parse as parse_config,
    },
    datapath::{
        Counters, DeniedEntry, LoadOptions, Maps, SyncReport, load_unpinned, program_object,
        sync::{apply as apply_change, resync},
    },
    policy::{
        Outcome, RefreshOptions, RefreshReport, Refresher, SetOrigin, SourceReport, SourceStatus,
    },
    sources::format::{
        Format,
        json::{RecordFilter, Selector},
        parse_document,
    },
    sources::http::{
        Conditional, FetchError, FetchErrorKind, FetchOptions, FetchOutcome, FetchSettings,
        Fetcher, Proxy, USER_AGENT,
    },
    sources::presets::{PresetSource, all as all_presets, find as find_preset},
};

/// The `allowlist` binary: parse the command line and run the verb.
pub fn main() -> std::process::ExitCode {
    cli::main()
}
