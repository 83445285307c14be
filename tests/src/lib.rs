//! End-to-end test support: network namespaces, real TCP traffic, the real agent
//! binary, and a local HTTPS provider server.

pub mod netns;
pub mod provider_server;
pub mod world;
