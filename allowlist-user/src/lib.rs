//! The allowlist agent.

pub mod datapath;
