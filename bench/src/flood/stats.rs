//! What the kernel counts while the flood runs: the receive CPU's softirq time
//! (/proc/stat), the veth's packet and drop counters (`ip -s -j link`), and the
//! receive CPU's backlog losses as /proc/net/softnet_stat counts them (host-wide).

use std::time::Instant;

use allowlist_tests::netns::Netns;
use anyhow::{Context as _, Result, bail};

/// Counters read at one moment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Snapshot {
    pub at: Instant,
    /// Softirq time of the receiving CPU, nanoseconds.
    pub softirq_ns: u64,
    /// All time of the receiving CPU (busy and idle), nanoseconds.
    pub total_ns: u64,
    /// Frames the veth delivered: to the receiving CPU's backlog, or with native XDP
    /// to the veth's own queue.
    pub rx_packets: u64,
    /// Frames the veth could not hand over (the backlog was full). With native XDP a
    /// frame the veth's queue has no room for counts as the client end's tx_dropped,
    /// not here.
    pub rx_dropped: u64,
    /// softnet_stat's dropped column for the receiving CPU (every interface).
    pub softnet_dropped: u64,
}

impl Snapshot {
    pub(crate) fn take(server: &Netns, interface: &str, cpu: usize) -> Result<Self> {
        let (softirq_ns, total_ns) = cpu_time(cpu)?;
        let (rx_packets, rx_dropped) = link_stats(server, interface)?;
        Ok(Self {
            at: Instant::now(),
            softirq_ns,
            total_ns,
            rx_packets,
            rx_dropped,
            softnet_dropped: softnet_dropped(cpu)?,
        })
    }
}

/// (softirq, total) time of `cpu` from /proc/stat, in nanoseconds. Without
/// `CONFIG_IRQ_TIME_ACCOUNTING` the kernel samples it at every tick: a tick that finds
/// the CPU serving a softirq (in an interrupt exit, a `local_bh_enable` or ksoftirqd)
/// counts as softirq time.
fn cpu_time(cpu: usize) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let label = format!("cpu{cpu}");
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))
        .with_context(|| format!("/proc/stat has no {label} line"))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("/proc/stat: {line}"))?;
    if ticks.len() < 8 {
        bail!("/proc/stat: too few fields: {line}");
    }
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = ticks[..8].iter().sum();
    let ns = ns_per_tick();
    Ok((ticks[6] * ns, total * ns))
}

fn ns_per_tick() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1_000_000_000 / hz.max(1) as u64
}

/// (rx packets, rx dropped) of `interface` in `server`'s namespace.
fn link_stats(server: &Netns, interface: &str) -> Result<(u64, u64)> {
    let out = server
        .command("ip")
        .args(["-s", "-j", "link", "show", "dev", interface])
        .output()
        .context("run ip -s -j link")?;
    if !out.status.success() {
        bail!(
            "ip -s link show dev {interface}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j output")?;
    let rx = &json[0]["stats64"]["rx"];
    match (rx["packets"].as_u64(), rx["dropped"].as_u64()) {
        (Some(packets), Some(dropped)) => Ok((packets, dropped)),
        _ => bail!("ip -s -j link: no rx packets/dropped for {interface}: {json}"),
    }
}

/// The dropped column (the second) of `cpu`'s row of /proc/net/softnet_stat. Rows
/// are for online CPUs; the 13th column names the CPU (Linux 5.10 and later).
fn softnet_dropped(cpu: usize) -> Result<u64> {
    let text =
        std::fs::read_to_string("/proc/net/softnet_stat").context("read /proc/net/softnet_stat")?;
    for (row, line) in text.lines().enumerate() {
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(|f| u64::from_str_radix(f, 16))
            .collect::<Result<_, _>>()
            .with_context(|| format!("softnet_stat: {line}"))?;
        let id = fields.get(12).map_or(row, |&c| c as usize);
        if id == cpu {
            return fields
                .get(1)
                .copied()
                .context("softnet_stat: no dropped column");
        }
    }
    bail!("/proc/net/softnet_stat has no row for CPU {cpu}")
}

/// The CPUs this process may run on, in order.
pub(crate) fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is valid; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the set is valid for its size.
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: every index is inside the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// `net.core.netdev_max_backlog`: how many frames a CPU's backlog holds.
pub(crate) fn max_backlog() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/core/netdev_max_backlog")
        .context("read net.core.netdev_max_backlog")?;
    text.trim()
        .parse()
        .with_context(|| format!("netdev_max_backlog: {text}"))
}
