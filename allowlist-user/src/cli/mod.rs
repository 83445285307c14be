//! `allowlist`'s command line: the arguments, and one function per verb.

mod args;
mod check;
mod common;
mod control;
mod denied;
mod fetch;
mod history;
mod list;
mod presets;
mod status;

use std::process::ExitCode;

use clap::Parser as _;

use crate::{agent, observe::Log};

use args::{Cli, Command};

/// The binary's whole life: parse the arguments, set up logging, run the verb.
pub(crate) fn main() -> ExitCode {
    // Until the agent installs its handler, SIGHUP's default action would kill it: a
    // `systemctl reload` right after the start must be held, not fatal. Blocked here,
    // before any thread exists, it stays pending until `agent::run` unblocks it.
    agent::hold_reload_signal();
    agent::return_large_blocks_when_freed();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        agent::release_reload_signal();
    }
    let log = Log::init(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log.fatal(&err);
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Presets = cli.command {
        presets::presets();
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Command::Run(args) = &cli.command {
        return runtime.block_on(async {
            let shutdown = agent::shutdown_signal()?;
            agent::run(&cli.config, args, shutdown).await
        });
    }
    let config = common::load_config(&cli.config)?;
    match cli.command {
        Command::Status { json } => status::status(&config, json),
        Command::List { provider, json } => list::list(&config, provider.as_deref(), json),
        Command::Check {
            address,
            port,
            json,
        } => check::check(&config, address, port, json),
        Command::Fetch { force, json } => runtime.block_on(fetch::fetch(&config, force, json)),
        Command::History {
            since,
            source,
            json,
        } => history::history(&config, since, source.as_deref(), json),
        Command::Denied { top, since, json } => denied::denied(&config, top as usize, since, json),
        Command::Reload => control::reload(&config),
        Command::Detach => control::detach(&config),
        Command::Run(_) | Command::Presets => unreachable!("handled above"),
    }
}
