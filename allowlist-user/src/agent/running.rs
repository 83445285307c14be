//! The agent once started: its loop (refreshes, syncs, reloads, the watch, the link
//! checks) and the status it publishes.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use ipnet::IpNet;
use tokio::time::{Instant, sleep_until};
use tracing::{error, info, info_span, warn};

use super::{
    apply_settings,
    links::{LinkEvents, check_links_only, report_interface_changes},
};
use crate::{
    config::{self, Config, Mode},
    datapath::{Filter, InterfaceState},
    denied::{DeniedWatch, Recording, Sampling, senders::SenderIndex},
    observe::metrics::SharedStatus,
    observe::status::{AgentStatus, ProviderStatus, STATUS_HEARTBEAT, SyncStatus},
    observe::systemd,
    policy::{Outcome, RefreshOptions, RefreshReport, Refresher, SetOrigin},
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

pub(super) struct Agent {
    pub(super) config: Config,
    pub(super) filter: Filter,
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
    pub(super) denied: DeniedWatch,
    /// How much of a flood the watch is offered.
    watch_sampling: Sampling,
    /// The last read of the watch failed (and was logged).
    watch_read_failing: bool,
}

/// Rewrites the last published status with the time (the heartbeat), and new
/// interface states if given.
pub(super) fn republish(
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
    pub(super) fn new(
        config: Config,
        filter: Filter,
        refresher: Refresher,
        shared: SharedStatus,
        carry_over: Option<BTreeMap<IpNet, u32>>,
        configured_pin_dir: std::path::PathBuf,
    ) -> Self {
        let denied = DeniedWatch::load(
            &config.state_dir,
            config.watch.keep,
            SenderIndex::gather(&config, &refresher),
        );
        Agent {
            config,
            filter,
            refresher,
            shared,
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
        }
    }

    /// Fills the maps with the lists in force (after recording the first fetch, if
    /// there was one), attaches, publishes the status and tells systemd.
    pub(super) fn start(&mut self, initial_refresh: Option<&RefreshReport>) -> Result<()> {
        if let Some(report) = initial_refresh {
            self.record(report);
            self.denied
                .set_index(SenderIndex::gather(&self.config, &self.refresher));
        }
        let desired = self.desired();
        let report = self
            .filter
            .sync(&desired)
            .context("filling the allowlist maps")?;
        info!(
            prefixes = desired.len(),
            added = report.added,
            removed = report.removed,
            "allowlist loaded from the last good lists"
        );
        self.last_sync = Some(SyncStatus::ok(&report));
        self.filter.attach(&self.config.interfaces)?;
        self.publish();
        systemd::ready(&self.summary());
        Ok(())
    }

    /// `refreshed`: the lists were just fetched, so the first refresh waits an interval.
    pub(super) async fn main_loop(
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
        let mut timers = Timers::new();
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
                        let options = RefreshOptions { force };
                        let Some(report) = self.refresh(options, events.as_ref(), &mut timers, shutdown.as_mut()).await else {
                            return Ok(());
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
                _ = timers.link_check.tick() => self.check_links(),
                _ = timers.heartbeat.tick() => republish(&self.shared, &self.config.state_dir, None, &mut self.state_write_failures),
                _ = timers.watch_read.tick() => self.read_watch(),
                _ = timers.denied_save.tick() => self.save_denied(),
                signal = &mut shutdown => { info!("{signal}"); return Ok(()); }
            }
        }
    }

    /// One refresh. It may take minutes (timeouts, retries, Retry-After): a stop
    /// signal abandons it (`None`; the lists already accepted were saved), the links
    /// are still checked and the status rewritten, and a SIGHUP stays pending and is
    /// acted on right after.
    async fn refresh(
        &mut self,
        options: RefreshOptions,
        events: Option<&LinkEvents>,
        timers: &mut Timers,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = &'static str>>,
    ) -> Option<RefreshReport> {
        let refresh = self.refresher.refresh_with(options);
        tokio::pin!(refresh);
        loop {
            let link_event = async {
                match events {
                    Some(events) => events.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                report = &mut refresh => return Some(report),
                signal = &mut shutdown => {
                    info!("{signal} during a refresh");
                    return None;
                }
                _ = link_event => check_links_only(&mut self.filter, &self.config, &self.shared, &mut self.state_write_failures),
                _ = timers.link_check.tick() => check_links_only(&mut self.filter, &self.config, &self.shared, &mut self.state_write_failures),
                _ = timers.heartbeat.tick() => republish(&self.shared, &self.config.state_dir, None, &mut self.state_write_failures),
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
    pub(super) fn read_watch(&mut self) {
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
    pub(super) fn save_denied(&mut self) {
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

/// What the loop does at its own pace, besides refreshing: a late tick is taken
/// late, not made up for.
struct Timers {
    link_check: tokio::time::Interval,
    heartbeat: tokio::time::Interval,
    watch_read: tokio::time::Interval,
    denied_save: tokio::time::Interval,
}

impl Timers {
    fn new() -> Self {
        let every = |period| {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        };
        Timers {
            link_check: every(LINK_CHECK),
            heartbeat: every(STATUS_HEARTBEAT),
            watch_read: every(WATCH_READ),
            denied_save: every(DENIED_SAVE),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};

    use super::*;

    fn status() -> AgentStatus {
        AgentStatus::example(SystemTime::now())
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
