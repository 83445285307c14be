//! Command-line interface.

use std::{net::IpAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

pub const DEFAULT_CONFIG: &str = "/etc/allowlist/allowlist.toml";

#[derive(Debug, Parser)]
#[command(
    name = "allowlist",
    version,
    about = "Lets only webhook providers' published IP ranges reach this host's protected TCP ports (XDP)",
    propagate_version = true
)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_CONFIG, env = "ALLOWLIST_CONFIG")]
    pub config: PathBuf,

    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: attach the filter, keep the allowlist fresh, serve metrics.
    Run(RunArgs),
    /// Interfaces, mode, counters, prefixes and hits per provider, and every source's last refresh.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The prefixes in the live filter.
    List {
        /// Only this provider's prefixes.
        #[arg(long, value_name = "NAME")]
        provider: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The verdict the filter would give a TCP segment from ADDRESS, and why.
    Check {
        address: IpAddr,
        /// The destination port.
        #[arg(long, default_value_t = 443)]
        port: u16,
        #[arg(long)]
        json: bool,
    },
    /// Fetch and validate every source, print the resulting set and its diff against
    /// the live filter; changes nothing.
    Fetch {
        /// Bypass the empty and shrink guards.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Make the running agent re-read its configuration and refresh now (SIGHUP).
    Reload,
    /// Detach the filter from every interface, remove every pin, stop the agent.
    Detach,
    /// The built-in provider presets and their sources.
    Presets,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// On exit, detach the filter and remove the pins (by default the filter stays
    /// attached and enforcing after the agent stops).
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Bypass the empty and shrink guards on the first refresh.
    #[arg(long)]
    pub force: bool,
    /// Emit an aya-log event for every dropped packet (debugging; costs per drop).
    #[arg(long)]
    pub debug_events: bool,
    /// Accept pins on a bpffs private to this process's mount namespace, where no
    /// host bpffs can be found (e.g. under `ip netns exec` without /proc/1/root):
    /// the filter then detaches when the agent exits, for whatever reason.
    #[arg(long)]
    pub ephemeral_filter: bool,
}
