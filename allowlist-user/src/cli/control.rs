//! `allowlist reload` and `allowlist detach`: what is asked of the running agent.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{
    agent::{self, LockHolder},
    config::Config,
    datapath::{self},
};

pub(super) fn reload(config: &Config) -> Result<()> {
    let pid = agent::signal_agent(&config.state_dir, libc::SIGHUP)?;
    println!(
        "asked the agent (pid {pid}) to reload {}",
        config.path.display()
    );
    Ok(())
}

pub(super) fn detach(config: &Config) -> Result<()> {
    agent::check_privileges().map_err(|e| anyhow!(e))?;
    // The agent goes first: its descriptors keep the links alive, and while it runs it
    // would attach again what the pins' removal detached. It exits leaving its pins.
    match agent::lock_holder(&config.state_dir) {
        LockHolder::Nobody => {}
        LockHolder::Agent(pid) => {
            agent::signal(pid, libc::SIGTERM)?;
            if !agent::wait_for_exit(&config.state_dir, Duration::from_secs(10)) {
                bail!(
                    "the agent (pid {pid}) did not exit within 10 s after SIGTERM; nothing was detached"
                );
            }
            println!("stopped the agent (pid {pid})");
        }
        LockHolder::Elsewhere { pid_file_says } => {
            return Err(agent::ControlError::RunningElsewhere {
                state_dir: config.state_dir.clone(),
                pid_file_says,
            })
            .context("nothing was detached");
        }
    }
    let removed = datapath::remove_pins(&config.pin_dir)?;
    if removed.is_empty() {
        println!("nothing was pinned under {}", config.pin_dir.display());
    } else {
        for path in &removed {
            println!("removed {}", path.display());
        }
        println!("the filter is detached");
    }
    Ok(())
}
