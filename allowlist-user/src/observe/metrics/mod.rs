//! Prometheus metrics at `/metrics` and a health check at `/healthz`.
//!
//! Everything is read at scrape time: packet counters and hits from the pinned maps
//! (so they keep counting across agent restarts), the rest from the agent's status.

mod collector;
mod server;
#[cfg(test)]
mod tests;

use std::sync::{Arc, RwLock};

use crate::observe::status::AgentStatus;

pub(crate) use server::serve;

/// What the agent shares with the endpoint.
pub(crate) type SharedStatus = Arc<RwLock<Option<AgentStatus>>>;
