//! What the agent tells the world about itself: the status it writes for the CLI
//! ([`status`]), the Prometheus metrics and `/healthz` ([`metrics`]), the log (on
//! stderr, or into the journal with each line's priority) and systemd's
//! notifications for `Type=notify` units ([`systemd`]).

mod log;
pub(crate) mod metrics;
pub(crate) mod status;
pub(crate) mod systemd;

pub(crate) use log::{Log, LogFormat};
