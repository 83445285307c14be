//! `allowlist run`: the long-running agent.
//!
//! Start-up order matters for failing safe: everything that can be refused (config,
//! privileges, interfaces, another agent) is checked before anything is attached; the
//! maps are filled from the last good lists on disk (or the presets' snapshots)
//! before the program is attached, so the filter never starts empty; a previous
//! agent's link is taken over atomically.
//!
//! - [`process`]: signals and the allocator, set before anything else runs;
//! - [`control`]: the pid file and its lock, and signalling the running agent;
//! - [`links`]: the interfaces: re-attaching, and the rtnetlink wake-ups;
//! - [`running`]: the agent once started: its loop, syncs, reloads and status.

mod control;
mod links;
mod process;
mod running;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::{Arc, RwLock},
};

use anyhow::{Result, anyhow};
use ipnet::IpNet;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{error, info, warn};

pub(crate) use control::{
    ControlError, LockHolder, can_use_bpf, check_privileges, lock_holder, signal, signal_agent,
    wait_for_exit,
};
pub(crate) use process::{
    hold_reload_signal, release_reload_signal, return_large_blocks_when_freed, shutdown_signal,
};
use running::Agent;

use crate::{
    config::{self, Config, Mode},
    datapath::{self, Filter, LoadOptions, PinLocation},
    observe::metrics::{self, SharedStatus},
    policy::{RefreshOptions, Refresher, SetOrigin},
    sources::{http::Fetcher, presets},
    store,
};

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// On exit, detach the filter and remove the pins (by default the filter stays
    /// attached and enforcing after the agent stops).
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Serve /metrics and /healthz at ADDR:PORT, whatever the configuration's
    /// `metrics` says (the Kubernetes DaemonSet passes the pod's IP). `[ADDR]:PORT`
    /// is accepted for IPv4 too, so `[$(POD_IP)]:9975` suits either family.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_listen_addr)]
    pub metrics: Option<SocketAddr>,
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

/// A socket address to listen on: `ADDR:PORT`, `[IPv6]:PORT`, or `[IPv4]:PORT`.
pub(crate) fn parse_listen_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    text.strip_prefix('[')
        .and_then(|rest| rest.split_once("]:"))
        .and_then(|(ip, port)| Some((ip.parse::<Ipv4Addr>().ok()?, port.parse::<u16>().ok()?)))
        .map(SocketAddr::from)
        .ok_or_else(|| {
            format!("{text:?} is not ADDR:PORT (e.g. 127.0.0.1:9975, [2001:db8::1]:9975)")
        })
}

/// `allowlist run`, until `shutdown` resolves (see [`shutdown_signal`]).
pub(crate) async fn run(
    config_path: &Path,
    args: &RunArgs,
    shutdown: impl Future<Output = &'static str>,
) -> Result<()> {
    let mut hup = process::reload_signal()?;
    tokio::pin!(shutdown);
    let (config, pins, configured_pin_dir) = prepare(config_path, args)?;
    let _lock = control::acquire(&config.state_dir, &config.pin_dir)?;

    let mut refresher = Refresher::new(&config, Fetcher::default())?;
    refresher.bootstrap();
    // A source with neither a saved list nor a snapshot is fetched before the filter
    // is attached, rather than attaching a filter that drops its sender until the
    // first refresh.
    let initial_refresh = if has_source_without_list(&refresher) {
        info!("some sources have no saved list: fetching them before attaching");
        tokio::select! {
            report = refresher.refresh_with(RefreshOptions { force: args.force }) => Some(report),
            signal = &mut shutdown => {
                info!("{signal} during the first fetch; exiting, nothing was attached");
                return Ok(());
            }
        }
    } else {
        None
    };
    let filter = load_filter(&config, args)?;
    let carry_over = carry_over(&filter, &refresher)?;

    let shared: SharedStatus = Arc::new(RwLock::new(None));
    let mut agent = Agent::new(
        config,
        filter,
        refresher,
        shared.clone(),
        carry_over,
        configured_pin_dir,
    );
    agent.start(initial_refresh.as_ref())?;

    let (stop_tx, stop_rx) = watch::channel(false);
    // `run --metrics` wins over the configuration's `metrics`.
    let metrics_task = (args.metrics.or(agent.config.metrics))
        .map(|addr| spawn_metrics(addr, &agent, shared, stop_rx));

    let refreshed = initial_refresh.is_some();
    let result = agent
        .main_loop(&mut hup, shutdown, args.force && !refreshed, refreshed)
        .await;
    crate::observe::systemd::stopping();
    let _ = stop_tx.send(true);
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    agent.read_watch();
    agent.save_denied();
    if args.detach_on_exit {
        let removed = agent.filter.remove_pins()?;
        info!(pins = removed.len(), "detached on exit (--detach-on-exit)");
    } else if pins.ephemeral {
        warn!(
            "exiting; the filter detaches now: its pins were on a bpffs private to this process (--ephemeral-filter)"
        );
    } else {
        info!(
            "exiting; the filter stays attached and enforcing (pinned under {})",
            agent.config.pin_dir.display()
        );
    }
    result
}

/// Everything that can be refused before anything is attached: the configuration,
/// privileges, interfaces, `state_dir` and `pin_dir`. Returns the configuration with
/// `pin_dir` where the pins really are, that place, and `pin_dir` as configured.
fn prepare(
    config_path: &Path,
    args: &RunArgs,
) -> Result<(Config, PinLocation, std::path::PathBuf)> {
    let mut config = config::load(config_path)?;
    warn_presets_without_snapshot(&config);
    control::check_privileges().map_err(|e| anyhow!(e))?;
    datapath::check_interfaces(&config.interfaces)?;
    store::prepare_dir(&config.state_dir)?;
    let configured_pin_dir = config.pin_dir.clone();
    let pins = datapath::prepare_pin_dir(&config.pin_dir, args.ephemeral_filter)?;
    if pins.path != config.pin_dir {
        info!(pin_dir = %pins.path.display(), "this process runs in a private mount namespace (`ip netns exec`?): pinning on the host's bpffs through PID 1's root");
    }
    if pins.ephemeral {
        warn!(pin_dir = %pins.path.display(), "--ephemeral-filter: the pins are on a bpffs private to this mount namespace; the filter detaches when the agent exits");
    }
    config.pin_dir = pins.path.clone();
    Ok((config, pins, configured_pin_dir))
}

fn has_source_without_list(refresher: &Refresher) -> bool {
    (refresher.status().iter()).any(|s| s.in_force == SetOrigin::None)
}

/// The program and its maps (a previous agent's, if pinned), with the
/// configuration's ports, mode and watch set. Nothing is attached yet.
fn load_filter(config: &Config, args: &RunArgs) -> Result<Filter> {
    let mut filter = Filter::load(
        &config.pin_dir,
        &LoadOptions {
            debug_events: args.debug_events,
            without_watch: false,
        },
    )?;
    if filter.adopted_maps() {
        info!(pin_dir = %config.pin_dir.display(), "found a previous agent's maps; taking them over");
    }
    apply_settings(&mut filter, config)?;
    Ok(filter)
}

/// A previous agent's entries stay in force for as long as some source has no list
/// of its own yet (its saved state is gone or refused): a missing list must not
/// shrink what is allowed.
fn carry_over(
    filter: &Filter,
    refresher: &Refresher,
) -> Result<Option<std::collections::BTreeMap<IpNet, u32>>> {
    if !filter.adopted_maps() || !has_source_without_list(refresher) {
        return Ok(None);
    }
    let live = filter.maps().live_entries()?;
    warn!(
        entries = live.len(),
        "some sources have no saved list: the previous agent's entries stay in force until they are fetched"
    );
    Ok(Some(live))
}

/// Serves `/metrics` and `/healthz` until `stop` turns true.
fn spawn_metrics(
    addr: SocketAddr,
    agent: &Agent,
    shared: SharedStatus,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let pin_dir = agent.config.pin_dir.clone();
    let denied = agent.denied.shared_metrics();
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = metrics::serve(addr, shared, Some(denied), pin_dir, stopped).await {
            error!(%addr, error = %e, "the metrics endpoint failed");
        }
    })
}

/// Says which presets have no embedded snapshot: until their first fetch succeeds
/// they admit nothing (a host that boots without network drops their senders).
fn warn_presets_without_snapshot(config: &Config) {
    for provider in &config.providers {
        let Some(name) = &provider.preset else {
            continue;
        };
        if presets::find(name).is_some_and(|p| p.snapshot.is_none()) {
            warn!(provider = %provider.name, preset = %name, "the preset has no embedded snapshot: its senders are dropped until its first fetch succeeds");
        }
    }
}

pub(super) fn apply_settings(filter: &mut Filter, config: &Config) -> Result<()> {
    let maps = filter.maps_mut();
    maps.set_ports(&config.ports.iter().copied().collect())?;
    maps.set_monitor(config.mode == Mode::Monitor)?;
    maps.set_watch(config.watch.datapath_rate())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_flag_takes_either_family_with_or_without_brackets() {
        for (text, want) in [
            ("127.0.0.1:9975", "127.0.0.1:9975"),
            ("[192.0.2.1]:9975", "192.0.2.1:9975"),
            ("[2001:db8::1]:9975", "[2001:db8::1]:9975"),
            ("0.0.0.0:0", "0.0.0.0:0"),
        ] {
            assert_eq!(parse_listen_addr(text), Ok(want.parse().unwrap()), "{text}");
        }
        for bad in [
            "",
            "localhost:9975",
            "192.0.2.1",
            "[192.0.2.1]",
            "[192.0.2.1]:port",
            "2001:db8::1:9975",
            "[]:9975",
            "$(POD_IP):9975",
        ] {
            assert!(parse_listen_addr(bad).is_err(), "{bad:?} accepted");
        }
    }
}
