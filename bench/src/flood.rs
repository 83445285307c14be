//! The flood comparison: what a SYN flood from random sources costs the receiving
//! host with no filter, with nftables, with iptables and an ipset, and with the
//! allowlist, each holding the same lists (and an IPv6 flood, for the filters that
//! hold IPv6 prefixes); and what applying a change to each list
//! costs. Every figure is read against the no-filter case (or nftables) measured in
//! the same run. See "How the flood comparison is measured" in method.md.
//!
//! ```text
//!  client ns                                   server ns
//!  <id>c  AF_PACKET SYN flood (CPU s)  --veth-->  <id>s  RPS: receive path on CPU r
//!                                                        filter, TCP listener on :443
//! ```
//! Each case gets a fresh pair of namespaces (the tests' `World`), removed when the
//! case ends, fails or is interrupted: every nft table, ipset, iptables rule and XDP
//! attachment lives and dies with them.

mod filters;
mod render;
mod sender;
mod stats;

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, Instant},
};

use allowlist_tests::world::{CLIENT_A, CLIENT_A6, World};
use anyhow::{Context as _, Result, bail};
use aya::programs::XdpMode;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::{Rng as _, rngs::StdRng, seq::SliceRandom as _};

use crate::{check_interrupted, lists};
use filters::{Allowlist, Change, ipt, nft};
use sender::{Frames, Sender};
use stats::Snapshot;

pub(crate) use render::{section, spread};

/// List sizes: a list of the size of real webhook senders', and a large one.
const SMALL_V4: usize = 50;
const LARGE_V4: usize = 100_000;
/// IPv6 prefixes beside the large IPv4 list, for the filters that take IPv6
/// (nftables and the allowlist; the ipset is `family inet`).
const LARGE_V6: usize = 10_000;
/// The changes applied to the large list: half added, half removed.
const CHANGES: [usize; 2] = [10, 50_000];
/// Distinct flood sources, none of them in any list.
const FLOOD_SOURCES: usize = 65_536;
/// Seconds of flood before the counters are read, and between the two readings.
const WARM_UP: Duration = Duration::from_secs(1);
/// Time for the receive CPU to empty its backlog once the flood stops.
const DRAIN: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Filter {
    None,
    Nftables,
    Iptables,
    Allowlist(Attach),
}

/// The XDP mode the allowlist attaches in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attach {
    Generic,
    /// On a veth, native XDP runs in the veth's NAPI poll, on the sending CPU, so it is
    /// measured with the receive path on that CPU only.
    Native,
}

impl Attach {
    fn mode(self) -> XdpMode {
        match self {
            Attach::Generic => XdpMode::Skb,
            Attach::Native => XdpMode::Driver,
        }
    }
}

impl Filter {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Filter::None => "no filter",
            Filter::Nftables => "nftables (netdev ingress, interval sets)",
            Filter::Iptables => "iptables + ipset hash:net (raw PREROUTING)",
            Filter::Allowlist(Attach::Generic) => "allowlist (XDP, generic mode)",
            Filter::Allowlist(Attach::Native) => "allowlist (XDP, native mode)",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Size {
    Small,
    Large,
}

/// The address family of a flood's sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// Which CPU the server's receive path runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Receiver {
    /// RPS moves every frame to the other CPU's backlog, as a NIC queue steered to
    /// another CPU would: the filters run on a CPU of their own, and a receive CPU that
    /// is not saturated is woken by an inter-processor interrupt for a few frames at a
    /// time.
    OwnCpu,
    /// No RPS: the veth delivers each frame on the sending CPU, whose softirq runs the
    /// receive path between the sender's system calls. No interrupts between CPUs, and
    /// the sender slows down by what the receive path costs; native XDP runs here too.
    SenderCpu,
}

impl Receiver {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Receiver::OwnCpu => "its own CPU (RPS)",
            Receiver::SenderCpu => "sender's CPU",
        }
    }
}

/// One flood case: a filter holding a list (none for no filter), flooded from
/// sources of one family, received on one of the CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Case {
    pub filter: Filter,
    pub size: Option<Size>,
    pub family: Family,
    pub receiver: Receiver,
}

impl Case {
    /// Every case, in the order measured and shown. With the receive path on its own
    /// CPU: the IPv4 flood on every filter and list, then the IPv6 flood on the large
    /// list (which holds the IPv6 prefixes) for the filters that take IPv6: nftables
    /// and the allowlist (the ipset is `family inet`). With it on the sender's CPU:
    /// the large list only, and the allowlist in native mode beside generic.
    fn all() -> Vec<Case> {
        use Filter::{Iptables, Nftables};
        let generic = Filter::Allowlist(Attach::Generic);
        let native = Filter::Allowlist(Attach::Native);
        let large = Some(Size::Large);
        let own_cpu_v4 = std::iter::once((Filter::None, None)).chain(
            [Nftables, Iptables, generic]
                .into_iter()
                .flat_map(|f| [(f, Some(Size::Small)), (f, large)]),
        );
        let own_cpu_v6 = [(Filter::None, None), (Nftables, large), (generic, large)];
        let sender_cpu_v4 = [
            (Filter::None, None),
            (Nftables, large),
            (Iptables, large),
            (generic, large),
            (native, large),
        ];
        let sender_cpu_v6 = [
            (Filter::None, None),
            (Nftables, large),
            (generic, large),
            (native, large),
        ];
        let with = |family, receiver| {
            move |(filter, size)| Case {
                filter,
                size,
                family,
                receiver,
            }
        };
        own_cpu_v4
            .map(with(Family::V4, Receiver::OwnCpu))
            .chain(own_cpu_v6.map(with(Family::V6, Receiver::OwnCpu)))
            .chain(sender_cpu_v4.map(with(Family::V4, Receiver::SenderCpu)))
            .chain(sender_cpu_v6.map(with(Family::V6, Receiver::SenderCpu)))
            .collect()
    }

    /// The filter, its list, the flood's family and where it is received, for the
    /// progress lines and errors.
    fn describe(self) -> String {
        format!(
            "{}, {} list, {} flood, received on the {}",
            self.filter.label(),
            self.size.map_or("no".to_owned(), |s| format!("{s:?}")),
            self.family.label(),
            self.receiver.label()
        )
    }
}

/// One flood reading.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    /// Frames that reached the veth, per second: delivered and lost.
    pub offered: f64,
    /// Frames the veth handed to the receive CPU's backlog, per second.
    pub delivered: f64,
    /// Frames lost because the receive CPU's backlog was full, per second.
    pub lost: f64,
    /// The same losses as softnet_stat counts them for the receive CPU (every
    /// interface), per second.
    pub softnet_lost: f64,
    /// Frames the filter dropped, per second: the delivered rate times the share of
    /// delivered frames its own counter counted over the case (none: `None`).
    pub dropped: Option<f64>,
    /// Receive-CPU softirq time per delivered frame, nanoseconds.
    pub softirq_ns: f64,
    /// Share of the receive CPU's time spent in softirq.
    pub softirq_share: f64,
}

impl Sample {
    /// What the receive CPU disposed of per second: what the filter dropped, or (no
    /// filter) what it handed to the stack.
    pub(crate) fn handled(&self) -> f64 {
        self.dropped.unwrap_or(self.delivered)
    }

    /// Backlog losses as a share of the frames that reached the veth.
    pub(crate) fn loss_share(&self) -> f64 {
        if self.offered > 0.0 {
            self.lost / self.offered
        } else {
            0.0
        }
    }
}

pub(crate) struct CaseResult {
    pub case: Case,
    pub samples: Vec<Sample>,
    /// How long loading the list into the filter took, per round.
    pub loads: Vec<Duration>,
}

pub(crate) struct ChangeResult {
    /// Prefixes changed (half added, half removed).
    pub size: usize,
    /// nftables, the change as element additions and deletions.
    pub nft: Vec<Duration>,
    /// Set when an element-wise nftables change had not finished within this time.
    pub nft_gave_up: Option<Duration>,
    /// nftables, the set flushed and loaded with the new list (one transaction).
    pub nft_replace: Vec<Duration>,
    pub ipset: Vec<Duration>,
    pub allowlist: Vec<Duration>,
}

pub(crate) struct FloodReport {
    pub cases: Vec<CaseResult>,
    pub changes: Vec<ChangeResult>,
    pub rounds: usize,
    pub window: Duration,
    /// The sender's pace (frames per second), if it was paced.
    pub rate: Option<u64>,
    pub sender_cpu: usize,
    pub receive_cpu: usize,
    pub max_backlog: u64,
    pub sources: usize,
    pub elapsed: Duration,
}

impl FloodReport {
    pub(crate) fn case(&self, case: Case) -> Option<&CaseResult> {
        self.cases.iter().find(|c| c.case == case)
    }
}

/// The lists every filter holds, the changes applied to the large one, and the flood.
struct Plan {
    small: BTreeMap<IpNet, u32>,
    large: BTreeMap<IpNet, u32>,
    /// IPv4 prefixes outside the large list, none overlapping it or each other.
    extra: Vec<IpNet>,
    /// IPv4 prefixes of the large list, in random order (the ones a change removes).
    removable: Vec<IpNet>,
    frames_v4: Arc<Frames>,
    frames_v6: Arc<Frames>,
}

impl Plan {
    fn new() -> Self {
        let mut rng = lists::rng(0x5eed_f100);
        let small = lists::v4_aggregated(&mut rng, SMALL_V4, 16..=32);
        let most = CHANGES.iter().max().copied().unwrap_or(0);
        // One aggregated set, split: the large list and the prefixes changes add
        // never overlap (nftables refuses overlapping intervals).
        let all = lists::v4_aggregated(&mut rng, LARGE_V4 + most / 2, 16..=32);
        let mut nets: Vec<IpNet> = all.keys().copied().collect();
        nets.shuffle(&mut rng);
        let extra = nets.split_off(LARGE_V4);
        let mut large: BTreeMap<IpNet, u32> = nets.iter().map(|n| (*n, all[n])).collect();
        large.extend(v6_aggregated(&mut rng, LARGE_V6));
        let mut members = all.clone();
        members.extend(small.iter().map(|(k, v)| (*k, *v)));
        members.extend(
            large
                .iter()
                .filter(|(k, _)| k.addr().is_ipv6())
                .map(|(k, v)| (*k, *v)),
        );
        let members = lists::Membership::new(&members);
        let sources_v4 = flood_sources_v4(&mut rng, &members, FLOOD_SOURCES);
        let sources_v6 = flood_sources_v6(&mut rng, &members, FLOOD_SOURCES);
        Self {
            small,
            large,
            extra,
            removable: nets,
            frames_v4: Arc::new(Frames::syns(&mut rng, &sources_v4)),
            frames_v6: Arc::new(Frames::syns(&mut rng, &sources_v6)),
        }
    }

    fn frames(&self, family: Family) -> &Arc<Frames> {
        match family {
            Family::V4 => &self.frames_v4,
            Family::V6 => &self.frames_v6,
        }
    }

    fn list(&self, size: Size) -> &BTreeMap<IpNet, u32> {
        match size {
            Size::Small => &self.small,
            Size::Large => &self.large,
        }
    }

    /// The large list after the change of `n` prefixes.
    fn changed(&self, n: usize) -> BTreeMap<IpNet, u32> {
        let (forward, _) = self.change(n);
        let mut list = self.large.clone();
        for net in forward.remove {
            list.remove(net);
        }
        list.extend(forward.add.iter().map(|net| (*net, 0)));
        list
    }

    /// The change of `n` prefixes (half added, half removed) and its reverse.
    fn change(&self, n: usize) -> (Change<'_>, Change<'_>) {
        let half = n / 2;
        let (add, remove) = (&self.extra[..half], &self.removable[..n - half]);
        (
            Change { add, remove },
            Change {
                add: remove,
                remove: add,
            },
        )
    }
}

/// `n` IPv6 prefixes (/32 to /64 in 2000::/3), no one inside or beside another.
fn v6_aggregated(rng: &mut StdRng, n: usize) -> BTreeMap<IpNet, u32> {
    let mut nets: Vec<IpNet> = Vec::new();
    while nets.len() < n {
        nets.extend(lists::v6_prefixes(rng, n - nets.len(), 32..=64).into_keys());
        nets = IpNet::aggregate(&nets);
    }
    nets.truncate(n);
    nets.into_iter()
        .map(|net| (net, rng.random_range(0..lists::RULES)))
        .collect()
}

/// `n` distinct random IPv4 sources outside every list, and outside what a host's
/// stack would not take as a source at all (0/8, loopback, multicast and above) and
/// the namespaces' own documentation /24s. The packets never leave the veth pair.
fn flood_sources_v4(rng: &mut StdRng, members: &lists::Membership, n: usize) -> Vec<IpAddr> {
    let special: Vec<Ipv4Net> = [
        "0.0.0.0/8",
        "127.0.0.0/8",
        "224.0.0.0/3",
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
    ]
    .iter()
    .map(|s| s.parse().expect("a valid prefix"))
    .collect();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let addr = Ipv4Addr::from(rng.random::<u32>());
        if special.iter().any(|net| net.contains(&addr))
            || members.contains_v4(addr.into())
            || !seen.insert(addr)
        {
            continue;
        }
        out.push(addr.into());
    }
    out
}

/// `n` distinct random IPv6 sources in 2000::/3 (global unicast) outside every list
/// and outside the namespaces' own documentation /32.
fn flood_sources_v6(rng: &mut StdRng, members: &lists::Membership, n: usize) -> Vec<IpAddr> {
    let own: Ipv6Net = "2001:db8::/32".parse().expect("a valid prefix");
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        for addr in lists::denied_v6(rng, members, n - out.len()) {
            if !own.contains(&addr) && seen.insert(addr) {
                out.push(addr.into());
            }
        }
    }
    out
}

/// Runs every flood case `rounds` times (interleaved, each case in fresh
/// namespaces), then the change measurements.
pub(crate) fn run(rounds: usize, window: Duration, rate: Option<u64>) -> Result<FloodReport> {
    let started = Instant::now();
    let cpus = stats::allowed_cpus()?;
    let [sender_cpu, receive_cpu, ..] = cpus[..] else {
        bail!("the flood needs two CPUs (one sends, one receives); this process may use {cpus:?}");
    };
    eprintln!(
        "flood: lists of {SMALL_V4} and {LARGE_V4} IPv4 (+ {LARGE_V6} IPv6) prefixes, {FLOOD_SOURCES} IPv4 and as many IPv6 sources"
    );
    let plan = Plan::new();
    let mut allowlists = Vec::new();
    for size in [Size::Small, Size::Large] {
        allowlists.push(Allowlist::load(plan.list(size))?);
    }
    let mut results: Vec<CaseResult> = Case::all()
        .into_iter()
        .map(|case| CaseResult {
            case,
            samples: Vec::new(),
            loads: Vec::new(),
        })
        .collect();
    let flood = Flood {
        cpus: Cpus {
            sender: sender_cpu,
            receive: receive_cpu,
        },
        window,
        rate,
    };
    for round in 0..rounds {
        for result in &mut results {
            check_interrupted()?;
            let case = result.case;
            let allowlist = match (case.filter, case.size) {
                (Filter::Allowlist(_), Some(Size::Small)) => Some(&mut allowlists[0]),
                (Filter::Allowlist(_), Some(Size::Large)) => Some(&mut allowlists[1]),
                _ => None,
            };
            let (sample, load) = flood_case(&plan, case, allowlist, &flood)
                .with_context(|| format!("flood case {}", case.describe()))?;
            eprintln!(
                "  round {} {:<100}: reached {:.2} Mpps, handled {:.2} Mpps, lost {:.1} %, softirq {:.0} ns/packet",
                round + 1,
                case.describe(),
                sample.offered / 1e6,
                sample.handled() / 1e6,
                sample.loss_share() * 100.0,
                sample.softirq_ns
            );
            result.samples.push(sample);
            result.loads.extend(load);
        }
    }
    let changes = change_times(&plan, &mut allowlists[1])?;
    Ok(FloodReport {
        cases: results,
        changes,
        rounds,
        window,
        rate,
        sender_cpu,
        receive_cpu,
        max_backlog: stats::max_backlog()?,
        sources: plan.frames_v4.count(),
        elapsed: started.elapsed(),
    })
}

/// How every case is flooded.
struct Flood {
    cpus: Cpus,
    /// How long a reading lasts.
    window: Duration,
    /// Frames per second the sender sends at most.
    rate: Option<u64>,
}

#[derive(Clone, Copy)]
struct Cpus {
    sender: usize,
    /// The CPU of the receive path when RPS moves it off the sender's.
    receive: usize,
}

impl Cpus {
    /// The CPU the receive path runs on.
    fn receiving(self, receiver: Receiver) -> usize {
        match receiver {
            Receiver::OwnCpu => self.receive,
            Receiver::SenderCpu => self.sender,
        }
    }

    /// The CPU RPS moves the receive path to, if it does.
    fn rps(self, receiver: Receiver) -> Option<usize> {
        match receiver {
            Receiver::OwnCpu => Some(self.receive),
            Receiver::SenderCpu => None,
        }
    }
}

/// Fresh namespaces whose server end hands every received frame to `rps`'s backlog
/// (RPS), as a NIC with one queue steered to another CPU would; with no `rps`, frames
/// are received on the CPU that sends them.
fn world(rps: Option<usize>) -> Result<World> {
    let world = World::new();
    if let Some(cpu) = rps {
        steer(&world, cpu)?;
    }
    // A route back to every source, as a server has: without one the stack would
    // give up on each SYN-ACK at the route lookup and the no-filter case would cost
    // less than a real host pays. The client namespace drops the SYN-ACKs (they are
    // not its addresses and it does not forward).
    world
        .server
        .ip(&["route", "add", "default", "via", &CLIENT_A.to_string()]);
    world.server.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &CLIENT_A6.to_string(),
    ]);
    Ok(world)
}

/// Sets the server end's RPS mask to `cpu` alone.
fn steer(world: &World, cpu: usize) -> Result<()> {
    let mask = cpu_mask(cpu);
    // sysfs shows the namespace's devices only when mounted inside it, as
    // `ip netns exec` does.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", world.server.name(), "sh", "-c"])
        .arg(format!(
            "echo {mask} > /sys/class/net/{}/queues/rx-0/rps_cpus",
            world.server_if
        ))
        .output()
        .context("run ip netns exec")?;
    if !out.status.success() {
        bail!(
            "setting rps_cpus on {}: {}",
            world.server_if,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The sysfs CPU mask holding `cpu` alone: hex, in comma-separated 32-bit groups.
fn cpu_mask(cpu: usize) -> String {
    let groups = cpu / 32 + 1;
    (0..groups)
        .rev()
        .map(|g| {
            let bits: u32 = if g == cpu / 32 { 1 << (cpu % 32) } else { 0 };
            format!("{bits:08x}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// One flood reading of `case`'s filter holding its list; also the time loading the
/// list took (nftables and ipset: per world; the allowlist's was measured once).
fn flood_case(
    plan: &Plan,
    case: Case,
    mut allowlist: Option<&mut Allowlist>,
    flood: &Flood,
) -> Result<(Sample, Option<Duration>)> {
    let Case {
        filter,
        size,
        family,
        receiver,
    } = case;
    let world = world(flood.cpus.rps(receiver))?;
    let list = size.map(|s| plan.list(s));
    let load = match (filter, list) {
        (Filter::None, _) => None,
        (Filter::Nftables, Some(list)) => Some(nft::install(&world, list)?),
        (Filter::Iptables, Some(list)) => Some(ipt::install(&world, list)?),
        (Filter::Allowlist(attach), Some(_)) => {
            let program = allowlist.as_deref_mut().context("the allowlist instance")?;
            program.attach(&world, attach.mode())?;
            Some(program.load_time)
        }
        (_, None) => bail!("{filter:?} needs a list"),
    };
    // The allowlist instance serves every round: its counter starts where the last
    // case left it. The nft and iptables counters start at zero in fresh namespaces.
    let allowlist_before = match allowlist.as_deref() {
        Some(program) => program.dropped()?,
        None => 0,
    };
    let sample = measure(
        plan.frames(family),
        &world,
        flood,
        receiver,
        || match filter {
            Filter::None => Ok(None),
            Filter::Nftables => nft::dropped(&world).map(Some),
            Filter::Iptables => ipt::dropped(&world).map(Some),
            Filter::Allowlist(_) => Ok(Some(
                allowlist
                    .as_deref()
                    .context("the allowlist instance")?
                    .dropped()?
                    - allowlist_before,
            )),
        },
    );
    // Detached before its interface goes with the namespaces.
    if let Some(program) = allowlist {
        program.detach()?;
    }
    Ok((sample?, load))
}

/// Floods `world` for the warm-up and the window and reads the counters around the
/// window, the CPU time of the CPU `receiver` names among them. Once the flood has
/// stopped and the backlog drained, `dropped` (the filter's own counter since the
/// world was created) must account for the frames the veth delivered since then:
/// every one of them is TCP to :443 from an unlisted source.
fn measure(
    frames: &Arc<Frames>,
    world: &World,
    flood: &Flood,
    receiver: Receiver,
    dropped: impl Fn() -> Result<Option<u64>>,
) -> Result<Sample> {
    let receive_cpu = flood.cpus.receiving(receiver);
    let mut sender = Sender::start(
        world.client.path(),
        &world.client_if,
        frames.clone(),
        flood.cpus.sender,
        flood.rate,
    )?;
    wait(&mut sender, WARM_UP)?;
    let before = Snapshot::take(&world.server, &world.server_if, receive_cpu)?;
    wait(&mut sender, flood.window)?;
    let after = Snapshot::take(&world.server, &world.server_if, receive_cpu)?;
    sender.stop()?;
    std::thread::sleep(DRAIN);
    let end = Snapshot::take(&world.server, &world.server_if, receive_cpu)?;
    let share = match dropped()? {
        Some(filtered) => {
            // A few frames of the namespace's own (IPv6 neighbour discovery) are
            // not the filter's to drop.
            let share = filtered as f64 / end.rx_packets.max(1) as f64;
            if !(0.99..=1.0).contains(&share) {
                bail!(
                    "the filter dropped {filtered} of the {} frames delivered: it does not do what the allowlist does",
                    end.rx_packets
                );
            }
            Some(share)
        }
        None => None,
    };
    let secs = (after.at - before.at).as_secs_f64();
    let delivered = after.rx_packets - before.rx_packets;
    let lost = after.rx_dropped - before.rx_dropped;
    if delivered == 0 {
        bail!("no flood frame reached the server's interface");
    }
    let softirq = (after.softirq_ns - before.softirq_ns) as f64;
    let total = (after.total_ns - before.total_ns) as f64;
    Ok(Sample {
        offered: (delivered + lost) as f64 / secs,
        delivered: delivered as f64 / secs,
        lost: lost as f64 / secs,
        softnet_lost: (after.softnet_dropped - before.softnet_dropped) as f64 / secs,
        dropped: share.map(|s| s * delivered as f64 / secs),
        softirq_ns: softirq / delivered as f64,
        softirq_share: if total > 0.0 { softirq / total } else { 0.0 },
    })
}

/// Sleeps `time` in short steps, failing as soon as the flood or the run stops.
fn wait(sender: &mut Sender, time: Duration) -> Result<()> {
    let end = Instant::now() + time;
    while Instant::now() < end {
        check_interrupted()?;
        sender.check()?;
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Rounds of each change size: each round applies the change and its reverse.
fn change_rounds(size: usize) -> usize {
    if size > 1_000 { 2 } else { 3 }
}

/// How long an element-wise nftables change may take before it is given up:
/// nft 1.0.6 takes seconds for 10 elements of a 100,000-element interval set and did
/// not finish 3,400 in 500 s (development measurement).
const NFT_LIMIT: Duration = Duration::from_secs(30);

/// The time to apply each change (and its reverse) to the large list, in each
/// filter, with no flood running.
fn change_times(plan: &Plan, allowlist: &mut Allowlist) -> Result<Vec<ChangeResult>> {
    let mut results: Vec<ChangeResult> = CHANGES
        .iter()
        .map(|&size| ChangeResult {
            size,
            nft: Vec::new(),
            nft_gave_up: None,
            nft_replace: Vec::new(),
            ipset: Vec::new(),
            allowlist: Vec::new(),
        })
        .collect();
    eprintln!("flood: applying changes of {CHANGES:?} prefixes to the {LARGE_V4}-prefix lists");
    {
        let world = world(None)?;
        nft::install(&world, &plan.large)?;
        for result in &mut results {
            let (forward, back) = plan.change(result.size);
            let changed = plan.changed(result.size);
            for _ in 0..change_rounds(result.size) {
                check_interrupted()?;
                result.nft_replace.push(nft::replace(&world, &changed)?);
                result.nft_replace.push(nft::replace(&world, &plan.large)?);
            }
            for _ in 0..change_rounds(result.size) {
                check_interrupted()?;
                let Some(time) = nft::apply(&world, &forward, NFT_LIMIT)? else {
                    result.nft_gave_up = Some(NFT_LIMIT);
                    break;
                };
                result.nft.push(time);
                let time = nft::apply(&world, &back, NFT_LIMIT * 4)?
                    .context("nft did not undo a change it had made")?;
                result.nft.push(time);
            }
        }
    }
    {
        let world = world(None)?;
        ipt::install(&world, &plan.large)?;
        for result in &mut results {
            let (forward, back) = plan.change(result.size);
            for _ in 0..change_rounds(result.size) {
                check_interrupted()?;
                result.ipset.push(ipt::apply(&world, &forward)?);
                result.ipset.push(ipt::apply(&world, &back)?);
            }
        }
    }
    if allowlist.list() != &plan.large {
        bail!("the allowlist instance does not hold the large list");
    }
    for result in &mut results {
        let (forward, back) = plan.change(result.size);
        for _ in 0..change_rounds(result.size) {
            check_interrupted()?;
            result.allowlist.push(allowlist.apply(&forward)?);
            result.allowlist.push(allowlist.apply(&back)?);
        }
    }
    Ok(results)
}
