//! What the agent tells the world about itself outside its files and metrics: the
//! log (on stderr, or into the journal with each line's priority) and systemd's
//! notifications for `Type=notify` units.

mod log;
pub(crate) mod systemd;

pub(crate) use log::{Log, LogFormat};
