//! The filters the flood meets, each doing what the allowlist does (drop TCP to :443
//! from sources outside the list, let everything else through), each set up the way
//! its users set it up, inside the server's namespace only:
//!
//! - nftables: a netdev-family table with an ingress chain on the server's veth and
//!   interval sets (`flags interval`) of IPv4 and IPv6 prefixes;
//! - iptables (the distribution's, on its nf_tables backend) with an ipset `hash:net`
//!   in the raw table's PREROUTING chain;
//! - the allowlist program, in generic or native XDP mode, maps filled the way the
//!   agent fills them.
//!
//! Each reports how many packets it dropped (its own counters) and how long applying
//! a change to its list takes.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use allowlist_common::Reason;
use allowlist_tests::{netns::enter, world::World};
use allowlist_user::{LoadOptions, Maps, apply_change, load_unpinned, resync};
use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use ipnet::IpNet;

const NFT_TABLE: &str = "allowlist_bench";
const IPSET: &str = "allowlist_bench";

/// A change to a list: prefixes added and prefixes removed, in one application.
pub(crate) struct Change<'a> {
    pub add: &'a [IpNet],
    pub remove: &'a [IpNet],
}

/// Runs `command` (in the server's namespace) to completion; fails with its stderr.
fn run(command: &mut Command, what: &str) -> Result<std::process::Output> {
    let out = command.output().with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // nft quotes whole offending lines, which may hold 100,000 prefixes.
        let short: String = stderr.chars().take(2000).collect();
        bail!("{what} failed ({}): {}", out.status, short.trim());
    }
    Ok(out)
}

/// Runs `command` to completion, or kills it once `limit` has passed (`None`).
fn run_limited(command: &mut Command, what: &str, limit: Duration) -> Result<Option<Duration>> {
    let start = Instant::now();
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("run {what}"))?;
    loop {
        if let Some(status) = child.try_wait()? {
            let elapsed = start.elapsed();
            if !status.success() {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                let short: String = stderr.chars().take(2000).collect();
                bail!("{what} failed ({status}): {}", short.trim());
            }
            return Ok(Some(elapsed));
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        if let Err(err) = crate::check_interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes `text` to `name` in the world's directory and returns the path.
fn write_file(world: &World, name: &str, text: &str) -> Result<std::path::PathBuf> {
    let path = world.dir.path().join(name);
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

fn joined<'a>(nets: impl Iterator<Item = &'a IpNet>) -> String {
    let mut out = String::new();
    for (i, net) in nets.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{net}");
    }
    out
}

/// The nftables filter: `nft -f` of one table.
pub(crate) mod nft {
    use super::*;

    /// Loads the table with `list` on the server's interface; returns the time `nft -f`
    /// took.
    pub(crate) fn install(world: &World, list: &BTreeMap<IpNet, u32>) -> Result<Duration> {
        let v4 = joined(list.keys().filter(|n| n.addr().is_ipv4()));
        let v6 = joined(list.keys().filter(|n| n.addr().is_ipv6()));
        let elements = |e: &str| {
            if e.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {e} }};")
            }
        };
        let text = format!(
            "table netdev {NFT_TABLE} {{\n\
             \tset allow4 {{ type ipv4_addr; flags interval;{} }}\n\
             \tset allow6 {{ type ipv6_addr; flags interval;{} }}\n\
             \tchain ingress {{\n\
             \t\ttype filter hook ingress device \"{}\" priority -500; policy accept;\n\
             \t\ttcp dport 443 ip saddr != @allow4 counter drop\n\
             \t\ttcp dport 443 ip6 saddr != @allow6 counter drop\n\
             \t}}\n\
             }}\n",
            elements(&v4),
            elements(&v6),
            world.server_if
        );
        let path = write_file(world, "nft-table.nft", &text)?;
        let start = Instant::now();
        run(nft(world).arg("-f").arg(&path), "nft -f (the table)")?;
        Ok(start.elapsed())
    }

    /// Applies `change` as element additions and deletions in one `nft -f` (one
    /// transaction); returns its time, or `None` when `nft` had not finished within
    /// `limit` (it is then killed before it sends its batch: the set is unchanged).
    pub(crate) fn apply(
        world: &World,
        change: &Change<'_>,
        limit: Duration,
    ) -> Result<Option<Duration>> {
        let mut text = String::new();
        for (verb, nets) in [("add", change.add), ("delete", change.remove)] {
            for (set, v4) in [("allow4", true), ("allow6", false)] {
                let e = joined(nets.iter().filter(|n| n.addr().is_ipv4() == v4));
                if !e.is_empty() {
                    let _ = writeln!(text, "{verb} element netdev {NFT_TABLE} {set} {{ {e} }}");
                }
            }
        }
        let path = write_file(world, "nft-change.nft", &text)?;
        run_limited(nft(world).arg("-f").arg(&path), "nft -f (a change)", limit)
    }

    /// Replaces the IPv4 set's content with `list`'s IPv4 prefixes in one `nft -f`
    /// (`flush set` and `add element` of the whole list, one transaction): how a
    /// large change is applied when element-wise changes take too long.
    pub(crate) fn replace(world: &World, list: &BTreeMap<IpNet, u32>) -> Result<Duration> {
        let v4 = joined(list.keys().filter(|n| n.addr().is_ipv4()));
        let text = format!(
            "flush set netdev {NFT_TABLE} allow4\nadd element netdev {NFT_TABLE} allow4 {{ {v4} }}\n"
        );
        let path = write_file(world, "nft-replace.nft", &text)?;
        let start = Instant::now();
        run(nft(world).arg("-f").arg(&path), "nft -f (a replacement)")?;
        Ok(start.elapsed())
    }

    /// Packets the two drop rules counted.
    pub(crate) fn dropped(world: &World) -> Result<u64> {
        let out = run(
            nft(world).args(["-j", "list", "chain", "netdev", NFT_TABLE, "ingress"]),
            "nft list chain",
        )?;
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("nft -j output")?;
        let mut total = 0;
        let mut found = 0;
        for item in json["nftables"].as_array().into_iter().flatten() {
            for expr in item["rule"]["expr"].as_array().into_iter().flatten() {
                if let Some(packets) = expr["counter"]["packets"].as_u64() {
                    total += packets;
                    found += 1;
                }
            }
        }
        if found != 2 {
            bail!("nft list chain: expected two counters, found {found}");
        }
        Ok(total)
    }

    fn nft(world: &World) -> Command {
        world.server.command("nft")
    }
}

/// iptables with an ipset: `ipset restore` of a `hash:net` set, one rule in raw
/// PREROUTING.
pub(crate) mod ipt {
    use super::*;

    /// Creates the set with `list`'s IPv4 prefixes and the rule; returns the time
    /// `ipset restore` and `iptables` took together.
    pub(crate) fn install(world: &World, list: &BTreeMap<IpNet, u32>) -> Result<Duration> {
        let v4: Vec<&IpNet> = list.keys().filter(|n| n.addr().is_ipv4()).collect();
        // Room for the list and a change of the same size beside it.
        let maxelem = (v4.len() * 2).max(65_536);
        let mut text =
            format!("create {IPSET} hash:net family inet hashsize 65536 maxelem {maxelem}\n");
        for net in v4 {
            let _ = writeln!(text, "add {IPSET} {net}");
        }
        let path = write_file(world, "ipset-create.txt", &text)?;
        let start = Instant::now();
        restore(world, &path)?;
        let mut rule = world.server.command("iptables");
        rule.args([
            "-w",
            "-t",
            "raw",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            "443",
        ])
        .args(["-m", "set", "!", "--match-set", IPSET, "src", "-j", "DROP"]);
        run(&mut rule, "iptables -t raw -A PREROUTING")?;
        Ok(start.elapsed())
    }

    /// Applies `change` (IPv4 only: the set is `family inet`) with one `ipset restore`.
    pub(crate) fn apply(world: &World, change: &Change<'_>) -> Result<Duration> {
        let mut text = String::new();
        for (verb, nets) in [("add", change.add), ("del", change.remove)] {
            for net in nets.iter().filter(|n| n.addr().is_ipv4()) {
                let _ = writeln!(text, "{verb} {IPSET} {net}");
            }
        }
        let path = write_file(world, "ipset-change.txt", &text)?;
        let start = Instant::now();
        restore(world, &path)?;
        Ok(start.elapsed())
    }

    fn restore(world: &World, path: &Path) -> Result<()> {
        let file = std::fs::File::open(path)?;
        let mut command = world.server.command("ipset");
        command.arg("restore").stdin(file);
        run(&mut command, "ipset restore").map(|_| ())
    }

    /// Packets the DROP rule counted (`iptables-save -c`: `[packets:bytes] -A ...`).
    pub(crate) fn dropped(world: &World) -> Result<u64> {
        let mut save = world.server.command("iptables-save");
        save.args(["-c", "-t", "raw"]);
        let out = run(&mut save, "iptables-save")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("-A PREROUTING") && l.contains("-j DROP"))
            .context("iptables-save shows no DROP rule in raw PREROUTING")?;
        line.strip_prefix('[')
            .and_then(|rest| rest.split(':').next())
            .and_then(|packets| packets.parse().ok())
            .with_context(|| format!("iptables-save: no counters on {line}"))
    }
}

/// The allowlist program, loaded once per list and attached to each world in turn.
pub(crate) struct Allowlist {
    ebpf: Ebpf,
    maps: Maps,
    list: BTreeMap<IpNet, u32>,
    link: Option<XdpLinkId>,
    /// How long filling the fresh maps with the list took (`resync`, as the
    /// agent's first start does).
    pub load_time: Duration,
}

impl Allowlist {
    pub(crate) fn load(list: &BTreeMap<IpNet, u32>) -> Result<Self> {
        let (ebpf, mut maps) =
            load_unpinned(&LoadOptions::default()).context("load the allowlist program")?;
        maps.set_ports(&[443].into())?;
        let start = Instant::now();
        resync(&mut maps, list).context("fill the allowlist maps")?;
        let load_time = start.elapsed();
        Ok(Self {
            ebpf,
            maps,
            list: list.clone(),
            link: None,
            load_time,
        })
    }

    fn program(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(allowlist_common::PROGRAM_NAME)
            .context("the allowlist program")?
            .try_into()?)
    }

    /// Attaches the program in `mode` to the server's interface of `world`.
    pub(crate) fn attach(&mut self, world: &World, mode: XdpMode) -> Result<()> {
        let path = world.server.path();
        let interface = world.server_if.clone();
        let program = self.program()?;
        let link = std::thread::scope(|scope| {
            scope
                .spawn(move || -> Result<XdpLinkId> {
                    enter(&path).context("join the server namespace")?;
                    program
                        .attach(&interface, mode)
                        .with_context(|| format!("attach the allowlist to {interface}"))
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the attaching thread panicked"))?
        })?;
        self.link = Some(link);
        Ok(())
    }

    /// Detaches it again (before the world, and its interface, goes).
    pub(crate) fn detach(&mut self) -> Result<()> {
        if let Some(link) = self.link.take() {
            self.program()?
                .detach(link)
                .context("detach the allowlist")?;
        }
        Ok(())
    }

    /// Packets dropped for coming from a source outside the list.
    pub(crate) fn dropped(&self) -> Result<u64> {
        Ok(self.maps.counters()?.exit(Reason::NotAllowlisted))
    }

    /// Applies `change` to the maps the way a refresh does (`apply_change`); returns
    /// its time.
    pub(crate) fn apply(&mut self, change: &Change<'_>) -> Result<Duration> {
        let mut next = self.list.clone();
        for net in change.remove {
            next.remove(net);
        }
        for net in change.add {
            next.insert(*net, 0);
        }
        let start = Instant::now();
        apply_change(&mut self.maps, &self.list, &next).context("apply a change")?;
        let time = start.elapsed();
        self.list = next;
        Ok(time)
    }

    /// The list the maps hold now.
    pub(crate) fn list(&self) -> &BTreeMap<IpNet, u32> {
        &self.list
    }
}

impl Drop for Allowlist {
    fn drop(&mut self) {
        let _ = self.detach();
    }
}
