//! `allowlist run`: the long-running agent.
//!
//! Start-up order matters for failing safe: everything that can be refused (config,
//! privileges, interfaces, another agent) is checked before anything is attached; the
//! maps are filled from the last good lists on disk (or the presets' snapshots)
//! before the program is attached, so the filter never starts empty; a previous
//! agent's link is taken over atomically.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, anyhow};
use ipnet::IpNet;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
    time::{Instant, sleep_until},
};
use tracing::{error, info, info_span, warn};

use crate::{
    cli::RunArgs,
    config::{self, Config, Mode},
    control,
    datapath::{self, Filter, InterfaceState, LoadOptions},
    denied::{DeniedWatch, Recording, Sampling, senders::SenderIndex},
    link_events::LinkEvents,
    observe::metrics::{self, SharedStatus},
    observe::status::{AgentStatus, ProviderStatus, STATUS_HEARTBEAT, SyncStatus},
    observe::systemd,
    policy::{Outcome, RefreshOptions, RefreshReport, Refresher, SetOrigin},
    sources::{http::Fetcher, presets},
    store,
};

/// How soon a failed map sync is retried.
const SYNC_RETRY: Duration = Duration::from_secs(2);
/// How often the links are checked even when no rtnetlink notification came.
const LINK_CHECK: Duration = Duration::from_secs(2);
/// How often the datapath's denied sources are read (it counts between reads; its
/// LRU entries outlive this by far unless a flood churns them at the watch's rate).
const WATCH_READ: Duration = Duration::from_secs(5);
/// How often the table of denied sources is saved to `state_dir` (and on exit).
const DENIED_SAVE: Duration = Duration::from_secs(10);

/// The future that ends the agent: SIGTERM or SIGINT. Its handlers are installed
/// when this is called (so call it first), not when it is first polled; it resolves
/// to the signal's name. `main` passes it to [`run`], which hands it on to every
/// long task (mini-redis' `server::run(listener, shutdown)`).
pub(crate) fn shutdown_signal() -> Result<impl Future<Output = &'static str>> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
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

/// The reload signal's stream, installed before anything else so that no SIGHUP sent
/// during start-up (during the first fetch, say) is lost: the stream keeps one
/// pending notification until the loop reads it.
fn reload_signal() -> Result<tokio::signal::unix::Signal> {
    let hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    // A SIGHUP held since the process started is delivered to the handler now.
    set_reload_signal_blocked(false);
    Ok(hup)
}

/// Blocks SIGHUP in the calling thread and every thread it starts later; call it
/// first thing in `main`. [`run`] unblocks it once its handler is in place.
pub(crate) fn hold_reload_signal() {
    set_reload_signal_blocked(true);
}

/// Undoes [`hold_reload_signal`] for the commands that are not the agent.
pub(crate) fn release_reload_signal() {
    set_reload_signal_blocked(false);
}

/// glibc's allocator has no fixed size above which it maps a block of its own: each
/// time a mapped block is freed, it raises the threshold to that block's size, and
/// blocks below the threshold come from the heap, which keeps what is freed. A load
/// of 100,000 prefixes builds lists of megabytes and frees them, so after the first
/// refreshes the agent kept them all: 46 MiB resident where 34 MiB were in use
/// (`cargo xtask bench -- --only agent`). Fixing the threshold at glibc's default
/// (128 KiB) turns the raising off: large blocks are always mapped and go back to the
/// system when freed. Call it in `main` before any thread exists.
pub(crate) fn return_large_blocks_when_freed() {
    #[cfg(target_env = "gnu")]
    {
        const THRESHOLD: libc::c_int = 128 * 1024;
        // SAFETY: mallopt only sets an allocator parameter; no other thread exists yet.
        if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) } != 1 {
            // Not fatal: the agent works the same, holding more memory.
            eprintln!("allowlist: could not fix the allocator's mmap threshold");
        }
    }
}

fn set_reload_signal_blocked(blocked: bool) {
    // SAFETY: the set is initialised by sigemptyset before use; pthread_sigmask only
    // changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let how = if blocked {
            libc::SIG_BLOCK
        } else {
            libc::SIG_UNBLOCK
        };
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

struct Agent {
    config: Config,
    filter: Filter,
    refresher: Refresher,
    shared: SharedStatus,
    started_at: SystemTime,
    refresh_results: BTreeMap<String, BTreeMap<String, u64>>,
    last_sync: Option<SyncStatus>,
    sync_pending: bool,
    /// Entries adopted from a previous agent, kept until every source has a list.
    carry_over: Option<BTreeMap<IpNet, u32>>,
    /// Writes to `state_dir` that failed since start-up.
    state_write_failures: u64,
    /// `pin_dir` as the configuration file says it (`config.pin_dir` is where the
    /// pins really are, see [`datapath::PinLocation`]).
    configured_pin_dir: std::path::PathBuf,
    /// The denied sources, and who they are.
    denied: DeniedWatch,
    /// How much of a flood the watch is offered.
    watch_sampling: Sampling,
    /// The last read of the watch failed (and was logged).
    watch_read_failing: bool,
}

/// `allowlist run`, until `shutdown` resolves (see [`shutdown_signal`]).
pub(crate) async fn run(
    config_path: &Path,
    args: &RunArgs,
    shutdown: impl Future<Output = &'static str>,
) -> Result<()> {
    let mut hup = reload_signal()?;
    tokio::pin!(shutdown);
    let config = config::load(config_path)?;
    warn_presets_without_snapshot(&config);
    control::check_privileges().map_err(|e| anyhow!(e))?;
    let specs = config.interfaces.clone();
    datapath::check_interfaces(&specs)?;
    store::prepare_dir(&config.state_dir)?;
    let configured_pin_dir = config.pin_dir.clone();
    let pins = datapath::prepare_pin_dir(&config.pin_dir, args.ephemeral_filter)?;
    if pins.path != config.pin_dir {
        info!(pin_dir = %pins.path.display(), "this process runs in a private mount namespace (`ip netns exec`?): pinning on the host's bpffs through PID 1's root");
    }
    if pins.ephemeral {
        warn!(pin_dir = %pins.path.display(), "--ephemeral-filter: the pins are on a bpffs private to this mount namespace; the filter detaches when the agent exits");
    }
    let mut config = config;
    config.pin_dir = pins.path.clone();
    let _lock = control::acquire(&config.state_dir, &config.pin_dir)?;

    let mut refresher = Refresher::new(&config, Fetcher::default())?;
    refresher.bootstrap();
    // A source with neither a saved list nor a snapshot is fetched before the filter
    // is attached, rather than attaching a filter that drops its sender until the
    // first refresh.
    let initial_refresh = if refresher
        .status()
        .iter()
        .any(|s| s.in_force == SetOrigin::None)
    {
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
    apply_settings(&mut filter, &config)?;
    // A previous agent's entries stay in force for as long as some source has no list
    // of its own yet (its saved state is gone or refused): a missing list must not
    // shrink what is allowed.
    let carry_over = if filter.adopted_maps()
        && refresher
            .status()
            .iter()
            .any(|s| s.in_force == SetOrigin::None)
    {
        let live = filter.maps().live_entries()?;
        warn!(
            entries = live.len(),
            "some sources have no saved list: the previous agent's entries stay in force until they are fetched"
        );
        Some(live)
    } else {
        None
    };

    let shared: SharedStatus = Arc::new(RwLock::new(None));
    let denied = DeniedWatch::load(
        &config.state_dir,
        config.watch.keep,
        SenderIndex::gather(&config, &refresher),
    );
    let mut agent = Agent {
        config,
        filter,
        refresher,
        shared: shared.clone(),
        started_at: SystemTime::now(),
        refresh_results: BTreeMap::new(),
        last_sync: None,
        sync_pending: false,
        carry_over,
        state_write_failures: 0,
        configured_pin_dir,
        denied,
        watch_sampling: Sampling::default(),
        watch_read_failing: false,
    };
    if let Some(report) = &initial_refresh {
        agent.record(report);
        agent
            .denied
            .set_index(SenderIndex::gather(&agent.config, &agent.refresher));
    }
    let desired = agent.desired();
    let report = agent
        .filter
        .sync(&desired)
        .context("filling the allowlist maps")?;
    info!(
        prefixes = desired.len(),
        added = report.added,
        removed = report.removed,
        "allowlist loaded from the last good lists"
    );
    agent.last_sync = Some(SyncStatus::ok(&report));
    agent.filter.attach(&specs)?;
    agent.publish();
    systemd::ready(&agent.summary());

    let (stop_tx, stop_rx) = watch::channel(false);
    // `run --metrics` wins over the configuration's `metrics`.
    let metrics_task = args.metrics.or(agent.config.metrics).map(|addr| {
        let pin_dir = agent.config.pin_dir.clone();
        let denied = agent.denied.shared_metrics();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = metrics::serve(addr, shared, Some(denied), pin_dir, stopped).await {
                error!(%addr, error = %e, "the metrics endpoint failed");
            }
        })
    });

    let refreshed = initial_refresh.is_some();
    let result = agent
        .main_loop(&mut hup, shutdown, args.force && !refreshed, refreshed)
        .await;
    systemd::stopping();
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

/// The link check: re-attaches where it can, reports what changed, and updates the
/// interfaces in the published status. A free function over the fields it needs, so
/// that it also runs while a refresh holds the refresher.
fn check_links_only(
    filter: &mut Filter,
    config: &Config,
    shared: &SharedStatus,
    write_failures: &mut u64,
) {
    let changes = filter.reconcile(&config.interfaces);
    if changes.is_empty() {
        return;
    }
    report_interface_changes(&changes);
    republish(
        shared,
        &config.state_dir,
        Some(filter.interfaces().to_vec()),
        write_failures,
    );
}

/// Rewrites the last published status with the time (the heartbeat), and new
/// interface states if given.
fn republish(
    shared: &SharedStatus,
    state_dir: &Path,
    interfaces: Option<Vec<InterfaceState>>,
    write_failures: &mut u64,
) {
    let mut guard = shared.write().expect("status lock");
    let Some(status) = guard.as_mut() else {
        return;
    };
    if let Some(interfaces) = interfaces {
        status.interfaces = interfaces;
    }
    status.written_at = SystemTime::now();
    write_status(status, state_dir, write_failures);
}

/// Writes the status file; a failed write is counted in `write_failures` (the agent's
/// one counter, which the status then carries).
fn write_status(status: &mut AgentStatus, state_dir: &Path, write_failures: &mut u64) {
    if let Err(e) = status.write(state_dir) {
        *write_failures += 1;
        warn!(error = %e, "cannot write the status file: `allowlist status` shows an old one");
    }
    status.state_write_failures = *write_failures;
}

/// Logs how the interfaces' states changed: an interface that stops being filtered is
/// an error, one filtered again an info.
fn report_interface_changes(changes: &[(Option<InterfaceState>, InterfaceState)]) {
    for (before, after) in changes {
        let was_attached = before.as_ref().is_some_and(|b| b.attached);
        match (was_attached, after.attached) {
            (_, false) => {
                error!(interface = %after.name, error = after.error.as_deref().unwrap_or_default(), "the interface is NOT filtered")
            }
            (false, true) => info!(interface = %after.name, "the interface is filtered"),
            (true, true) => {}
        }
        let was_named = before.as_ref().and_then(|b| b.now_named.as_ref());
        if after.now_named.as_ref() != was_named
            && let Some(now) = &after.now_named
        {
            warn!(interface = %after.name, now_named = %now, "the interface was renamed; the filter follows the device");
        }
    }
}

fn apply_settings(filter: &mut Filter, config: &Config) -> Result<()> {
    let maps = filter.maps_mut();
    maps.set_ports(&config.ports.iter().copied().collect())?;
    maps.set_monitor(config.mode == Mode::Monitor)?;
    maps.set_watch(config.watch.datapath_rate())?;
    Ok(())
}

fn result_label(outcome: &Outcome) -> Option<&'static str> {
    match outcome {
        Outcome::Static => None,
        Outcome::Updated { .. } | Outcome::Unchanged => Some("success"),
        Outcome::NotModified => Some("not_modified"),
        Outcome::Failed { .. } => Some("failure"),
        Outcome::Refused { .. } => Some("refused"),
    }
}

impl Agent {
    /// `refreshed`: the lists were just fetched, so the first refresh waits an interval.
    async fn main_loop(
        &mut self,
        hup: &mut tokio::signal::unix::Signal,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = &'static str>>,
        force_first: bool,
        refreshed: bool,
    ) -> Result<()> {
        // Otherwise the first refresh runs at once: the lists on disk may be old.
        let mut next_refresh = if refreshed {
            Instant::now() + self.config.refresh
        } else {
            Instant::now()
        };
        let events = LinkEvents::subscribe()
            .inspect_err(|e| {
                warn!(error = %e, "cannot subscribe to rtnetlink link notifications; the links are checked every {}s only", LINK_CHECK.as_secs());
            })
            .ok();
        let mut link_check = tokio::time::interval(LINK_CHECK);
        link_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(STATUS_HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch_read = tokio::time::interval(WATCH_READ);
        watch_read.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut denied_save = tokio::time::interval(DENIED_SAVE);
        denied_save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut force = force_first;
        loop {
            let next_sync = if self.sync_pending {
                Instant::now() + SYNC_RETRY
            } else {
                next_refresh
            };
            let link_event = async {
                match &events {
                    Some(events) => events.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep_until(next_refresh.min(next_sync)) => {
                    if Instant::now() >= next_refresh {
                        // A refresh may take minutes (timeouts, retries, Retry-After): a
                        // stop signal abandons it (the lists already accepted were
                        // saved), the links are still checked and the status rewritten,
                        // and a SIGHUP stays pending and is acted on right after.
                        let report = {
                            let refresh = self.refresher.refresh_with(RefreshOptions { force });
                            tokio::pin!(refresh);
                            loop {
                                let link_event = async {
                                    match &events {
                                        Some(events) => events.changed().await,
                                        None => std::future::pending().await,
                                    }
                                };
                                tokio::select! {
                                    report = &mut refresh => break report,
                                    signal = &mut shutdown => { info!("{signal} during a refresh"); return Ok(()); }
                                    _ = link_event => check_links_only(&mut self.filter, &self.config, &self.shared, &mut self.state_write_failures),
                                    _ = link_check.tick() => check_links_only(&mut self.filter, &self.config, &self.shared, &mut self.state_write_failures),
                                    _ = heartbeat.tick() => republish(&self.shared, &self.config.state_dir, None, &mut self.state_write_failures),
                                }
                            }
                        };
                        self.record(&report);
                        self.sync();
                        self.denied.set_index(SenderIndex::gather(&self.config, &self.refresher));
                        force = false;
                        next_refresh = Instant::now() + self.config.refresh;
                    } else {
                        self.sync();
                    }
                }
                _ = hup.recv() => {
                    systemd::reloading();
                    self.reload();
                    systemd::ready(&self.summary());
                    next_refresh = Instant::now();
                }
                result = link_event => {
                    if let Err(e) = result {
                        warn!(error = %e, "reading rtnetlink link notifications failed");
                    }
                    self.check_links();
                }
                _ = link_check.tick() => self.check_links(),
                _ = heartbeat.tick() => republish(&self.shared, &self.config.state_dir, None, &mut self.state_write_failures),
                _ = watch_read.tick() => self.read_watch(),
                _ = denied_save.tick() => self.save_denied(),
                signal = &mut shutdown => { info!("{signal}"); return Ok(()); }
            }
        }
    }

    /// One line for systemd's STATUS=.
    fn summary(&self) -> String {
        let states = self.filter.interfaces();
        let filtered: Vec<&str> = states
            .iter()
            .filter(|i| i.attached)
            .map(|i| i.name.as_str())
            .collect();
        let missing: Vec<&str> = states
            .iter()
            .filter(|i| !i.attached)
            .map(|i| i.name.as_str())
            .collect();
        if missing.is_empty() {
            format!("filtering {}", filtered.join(", "))
        } else {
            format!(
                "filtering {}; NOT filtering {}",
                filtered.join(", "),
                missing.join(", ")
            )
        }
    }

    /// Makes sure the filter is still attached to every configured interface:
    /// re-attaches where a link was detached or its device re-created, follows renamed
    /// devices, and reports (log, status, metrics, /healthz) where it cannot.
    fn check_links(&mut self) {
        check_links_only(
            &mut self.filter,
            &self.config,
            &self.shared,
            &mut self.state_write_failures,
        );
    }

    /// Counts a refresh's results (the refresher logged them).
    fn record(&mut self, report: &RefreshReport) {
        for source in &report.sources {
            self.state_write_failures +=
                u64::from(source.save_failed) + u64::from(source.history_failed);
            if let Some(label) = result_label(&source.outcome) {
                *self
                    .refresh_results
                    .entry(source.id.clone())
                    .or_default()
                    .entry(label.to_owned())
                    .or_default() += 1;
            }
        }
    }

    /// Writes the allowlist in force into the maps; on failure, retried shortly.
    /// The allowlist in force, plus the carried-over entries while they are needed.
    fn desired(&self) -> BTreeMap<IpNet, u32> {
        let mut desired = self.refresher.allowlist().entries();
        for (net, rule) in self.carry_over.iter().flatten() {
            desired.entry(*net).or_insert(*rule);
        }
        desired
    }

    /// Drops the carried-over entries once every source has a list of its own.
    fn release_carry_over(&mut self) {
        if self.carry_over.is_some()
            && self
                .refresher
                .status()
                .iter()
                .all(|s| s.in_force != SetOrigin::None)
        {
            info!("every source has a list now: releasing the previous agent's entries");
            self.carry_over = None;
        }
    }

    fn sync(&mut self) {
        self.release_carry_over();
        let desired = self.desired();
        let span = info_span!("sync", prefixes = desired.len());
        let _enter = span.enter();
        match self.filter.sync(&desired) {
            Ok(report) => {
                if report.map_operations() > 0 {
                    info!(
                        added = report.added,
                        changed = report.changed,
                        removed = report.removed,
                        "maps updated"
                    );
                }
                self.last_sync = Some(SyncStatus::ok(&report));
                self.sync_pending = false;
            }
            Err(e) => {
                error!(error = %format!("{:#}", anyhow::Error::from(e)), "map sync failed; the maps hold a superset; retrying");
                self.last_sync = Some(SyncStatus::failed("map sync failed".to_owned()));
                self.sync_pending = true;
            }
        }
        self.publish();
    }

    /// SIGHUP: re-reads the configuration. A file that no longer validates is
    /// reported and ignored: the running configuration stays in force.
    fn reload(&mut self) {
        let path = self.config.path.clone();
        let new = match config::load(&path) {
            Ok(new) => new,
            Err(e) => {
                error!(error = %e, "reload: the configuration is invalid; keeping the running one");
                return;
            }
        };
        if new.pin_dir != self.configured_pin_dir
            || new.state_dir != self.config.state_dir
            || new.metrics != self.config.metrics
        {
            warn!("reload: pin_dir, state_dir and metrics take effect only after a restart");
        }
        let mut new = new;
        new.pin_dir = self.config.pin_dir.clone();
        new.state_dir = self.config.state_dir.clone();
        new.metrics = self.config.metrics;
        if let Err(e) = apply_settings(&mut self.filter, &new) {
            error!(error = %format!("{e:#}"), "reload: could not apply ports, mode and watch");
        }
        // Interfaces already filtered stay filtered whatever happens to the others.
        let changes = self.filter.reconcile(&new.interfaces);
        report_interface_changes(&changes);
        // The sources that did not change keep their lists and the history of their
        // refreshes (last success, failures in a row, refusals).
        if let Err(e) = self.refresher.reconfigure(&new) {
            error!(error = %e, "reload: cannot open the state directory; keeping the sources");
        }
        info!(mode = ?new.mode, ports = ?new.ports, providers = new.providers.len(), "configuration reloaded");
        self.config = new;
        self.sync();
        self.denied
            .set_index(SenderIndex::gather(&self.config, &self.refresher));
    }

    /// Merges the datapath's denied sources into the table (and its metrics). A read
    /// that fails is logged; the datapath keeps counting until the next one.
    fn read_watch(&mut self) {
        if !self.config.watch.enabled {
            return;
        }
        let maps = self.filter.maps();
        let read = maps
            .denied_sources()
            .and_then(|entries| Ok((entries, maps.counters()?)));
        match read {
            Ok((entries, counters)) => {
                let totals = Recording {
                    recorded: counters.watch_recorded,
                    unrecorded: counters.watch_not_recorded,
                };
                self.adjust_watch_sampling(totals.recorded + totals.unrecorded);
                self.denied
                    .observe(&entries, Some(totals), SystemTime::now());
                if std::mem::take(&mut self.watch_read_failing) {
                    info!("the denied sources can be read from the datapath again");
                }
            }
            // Said once, not every 5 s: the filter enforces whatever becomes of it.
            Err(e) if !self.watch_read_failing => {
                self.watch_read_failing = true;
                warn!(error = %format!("{:#}", anyhow::Error::from(e)), "cannot read the denied sources from the datapath; `allowlist denied` stays as it was until it can");
            }
            Err(_) => {}
        }
    }

    /// Under a flood, offers the watch's budget only a sample of the denied packets
    /// (see [`Sampling`]).
    fn adjust_watch_sampling(&mut self, denied: u64) {
        let cpus = aya::util::nr_cpus().map_or(1, |n| n as u32);
        let rate_per_cpu = self.config.watch.rate_per_cpu;
        let Some(change) = self.watch_sampling.observe(denied, rate_per_cpu, cpus) else {
            return;
        };
        let one_in = change.one_in;
        match self.filter.maps_mut().set_watch_sampling(one_in) {
            Ok(()) => {
                info!(
                    denied_per_second = change.denied_per_second.round(),
                    one_in, "the denied-source watch is offered one denied packet in {one_in}"
                );
                self.watch_sampling.set(one_in);
            }
            Err(e) => {
                warn!(error = %format!("{:#}", anyhow::Error::from(e)), "cannot set the watch's sampling")
            }
        }
    }

    /// Saves the table of denied sources; a failure is logged and counted like the
    /// other state writes.
    fn save_denied(&mut self) {
        if let Err(e) = self.denied.save(&self.config.state_dir, SystemTime::now()) {
            warn!(error = %e, "cannot save the denied sources");
            self.state_write_failures += 1;
        }
    }

    /// Shares the agent's status with the metrics endpoint and the CLI. The map
    /// counts are what the maps hold, not what was asked of them.
    fn publish(&mut self) {
        let entries = match self.filter.entries() {
            Ok(entries) => entries,
            Err(e) => {
                warn!(error = %format!("{:#}", anyhow::Error::from(e)), "cannot read the allowlist maps for the status");
                BTreeMap::new()
            }
        };
        let allowlist = self.refresher.allowlist();
        let v4 = entries.keys().filter(|n| n.addr().is_ipv4()).count();
        let status = AgentStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            config: self.config.path.clone(),
            started_at: self.started_at,
            written_at: SystemTime::now(),
            mode: match self.config.mode {
                Mode::Enforce => "enforce",
                Mode::Monitor => "monitor",
            }
            .to_owned(),
            ports: self.config.ports.clone(),
            interfaces: self.filter.interfaces().to_vec(),
            refresh_interval_secs: self.config.refresh.as_secs(),
            providers: allowlist
                .providers
                .iter()
                .map(|p| {
                    let v4 = p.prefixes.iter().filter(|n| n.addr().is_ipv4()).count();
                    ProviderStatus {
                        name: p.name.clone(),
                        rule_id: p.rule_id,
                        prefixes_v4: v4,
                        prefixes_v6: p.prefixes.len() - v4,
                    }
                })
                .collect(),
            map_entries_v4: v4,
            map_entries_v6: entries.len() - v4,
            last_sync: self.last_sync.clone(),
            refresh_results: self.refresh_results.clone(),
            sources: self.refresher.status(),
            state_write_failures: self.state_write_failures,
        };
        let mut status = status;
        write_status(
            &mut status,
            &self.config.state_dir,
            &mut self.state_write_failures,
        );
        *self.shared.write().expect("status lock") = Some(status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> AgentStatus {
        AgentStatus {
            version: "0".to_owned(),
            pid: 1,
            config: std::path::PathBuf::from("/etc/allowlist/allowlist.toml"),
            started_at: SystemTime::now(),
            written_at: SystemTime::now(),
            mode: "enforce".to_owned(),
            ports: vec![443],
            interfaces: Vec::new(),
            refresh_interval_secs: 3600,
            providers: Vec::new(),
            map_entries_v4: 0,
            map_entries_v6: 0,
            last_sync: None,
            refresh_results: BTreeMap::new(),
            sources: Vec::new(),
            state_write_failures: 0,
        }
    }

    /// A counter never goes down: the heartbeat's failed writes and the full
    /// publication's are counted in one place.
    #[test]
    fn failed_status_writes_are_counted_once_whoever_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("gone");
        let shared: SharedStatus = Arc::new(RwLock::new(Some(status())));
        let mut failures = 0;
        republish(&shared, &missing, None, &mut failures);
        republish(&shared, &missing, None, &mut failures);
        assert_eq!(failures, 2);
        let published = shared
            .read()
            .unwrap()
            .as_ref()
            .unwrap()
            .state_write_failures;
        assert_eq!(published, 2);
        // What `Agent::publish` does with a fresh status.
        let mut fresh = AgentStatus {
            state_write_failures: failures,
            ..status()
        };
        write_status(&mut fresh, &missing, &mut failures);
        assert_eq!((failures, fresh.state_write_failures), (3, 3));
        write_status(&mut fresh, tmp.path(), &mut failures);
        assert_eq!((failures, fresh.state_write_failures), (3, 3));
    }
}
