//! The arguments, as clap reads them.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

use crate::{agent::RunArgs, observe::LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "allowlist",
    version,
    about = "Lets only webhook providers' published IP ranges reach this host's protected TCP ports (XDP)",
    propagate_version = true
)]
pub(super) struct Cli {
    /// The configuration file.
    #[arg(long, global = true, value_name = "PATH", default_value = crate::config::DEFAULT_PATH, env = "ALLOWLIST_CONFIG")]
    pub config: PathBuf,

    /// Log format (under systemd, each line also carries its journal priority).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
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
    /// Every applied, refused or failed update of the sources, oldest first, from the
    /// history in state_dir (the agent need not run).
    History {
        /// Only the updates of the last D (`24h`, `7d`, `30m`).
        #[arg(long, value_name = "D", value_parser = parse_since)]
        since: Option<Duration>,
        /// Only this source (`intercom/0`) or provider (`intercom`).
        #[arg(long, value_name = "S")]
        source: Option<String>,
        /// One JSON record a line, as the history file holds them.
        #[arg(long)]
        json: bool,
    },
    /// The denied sources the agent recorded, by packets, and what each is: a
    /// webhook sender that a preset lists, or that a refused update or a removed
    /// range held, or nothing known. Reads the agent's `denied.json`.
    Denied {
        /// How many sources to show (known senders below them are listed after).
        #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
        top: u32,
        /// Only sources seen within this long (e.g. 1h, 2days); by default all that
        /// the agent keeps.
        #[arg(long, value_name = "DURATION", value_parser = parse_since)]
        since: Option<Duration>,
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

/// A duration back from now: `24h`, `7d`, `1h 30m`.
fn parse_since(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|err| format!("{text:?} is not a duration such as 24h, 7d or 30m: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_takes_a_duration_and_a_source() {
        let cli = Cli::try_parse_from([
            "allowlist",
            "history",
            "--since",
            "7d",
            "--source",
            "intercom/0",
            "--json",
        ])
        .expect("parses");
        let Command::History {
            since,
            source,
            json,
        } = cli.command
        else {
            panic!("not history: {:?}", cli.command)
        };
        assert_eq!(since, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(source.as_deref(), Some("intercom/0"));
        assert!(json);
        let cli = Cli::try_parse_from(["allowlist", "history", "--since", "24h"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::History { since: Some(d), source: None, json: false } if d == Duration::from_secs(86_400)
        ));
        let cli = Cli::try_parse_from(["allowlist", "history"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::History {
                since: None,
                source: None,
                json: false
            }
        ));
        for bad in ["yesterday", "7", "-1h", ""] {
            let err = Cli::try_parse_from(["allowlist", "history", &format!("--since={bad}")])
                .expect_err(bad)
                .to_string();
            assert!(err.contains("not a duration"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn denied_takes_top_since_and_json() {
        let cli = Cli::try_parse_from(["allowlist", "denied"]).expect("parses");
        let Command::Denied { top, since, json } = cli.command else {
            panic!("not denied: {:?}", cli.command)
        };
        assert_eq!((top, since, json), (20, None, false));
        let cli = Cli::try_parse_from([
            "allowlist",
            "denied",
            "--top",
            "5",
            "--since",
            "2h",
            "--json",
        ])
        .expect("parses");
        let Command::Denied { top, since, json } = cli.command else {
            panic!("not denied: {:?}", cli.command)
        };
        assert_eq!(
            (top, since, json),
            (5, Some(Duration::from_secs(7200)), true)
        );
        for bad in [["--top", "0"], ["--top", "-1"], ["--since", "soon"]] {
            let mut args = vec!["allowlist", "denied"];
            args.extend(bad);
            assert!(Cli::try_parse_from(&args).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn run_takes_the_metrics_flag() {
        let cli = Cli::try_parse_from(["allowlist", "run", "--metrics=[192.0.2.1]:9975"])
            .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("not run: {:?}", cli.command)
        };
        assert_eq!(args.metrics, Some("192.0.2.1:9975".parse().unwrap()));
        let cli = Cli::try_parse_from(["allowlist", "run"]).expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("not run: {:?}", cli.command)
        };
        assert_eq!(args.metrics, None, "the configuration decides");
        assert!(Cli::try_parse_from(["allowlist", "run", "--metrics", "nowhere"]).is_err());
    }
}
