//! The results table and the Markdown file.

use std::{fmt::Write as _, time::Duration};

use anyhow::Result;

use allowlist_user::DEFAULT_WATCH_RATE;

use crate::{
    agent::Memory,
    decision::Program,
    median, median_duration,
    refresh::{DiffApply, FullLoad, JsonParse},
};

/// The watch's sampling in the decision cases: what the agent sets for a flood of
/// about 1.4 Mpps (the AF_PACKET sender's rate here) at the default rate on 2 CPUs
/// (one in the power of two that brings it under half the budget).
pub(crate) const FLOOD_SAMPLING: u32 = 1024;

/// One decision case: the same frames judged by the three programs.
pub(crate) struct Case {
    pub name: &'static str,
    pub list: String,
    /// Which loaded instance (list size) judges it.
    pub instance: usize,
    pub frames: Vec<Vec<u8>>,
    /// Expected XDP action per program (empty, textbook, allowlist with the watch on
    /// and off).
    pub expect: [u32; 4],
    /// The watch's rate (records per second and CPU) for the allowlist program.
    pub watch_rate: u32,
    /// One denied packet in this many is offered to the watch's budget.
    pub watch_sampling: u32,
    /// Target: (kind, largest ratio to the empty program).
    pub target: Option<(&'static str, f64)>,
    /// Nanoseconds per packet, per program, one value per round.
    pub ns: [Vec<f64>; 4],
}

impl Case {
    pub(crate) fn new(
        name: &'static str,
        list: &str,
        instance: usize,
        frames: Vec<Vec<u8>>,
        expect: [u32; 3],
        target: Option<(&'static str, f64)>,
    ) -> Self {
        Self {
            name,
            list: list.to_owned(),
            instance,
            frames,
            expect: [expect[0], expect[1], expect[2], expect[2]],
            watch_rate: DEFAULT_WATCH_RATE,
            watch_sampling: FLOOD_SAMPLING,
            target,
            ns: Default::default(),
        }
    }

    /// The watch records every packet of the case: a rate beyond any packet rate
    /// (the program takes any rate; the configuration stops at a million).
    pub(crate) fn recording_every_packet(mut self) -> Self {
        self.watch_rate = u32::MAX;
        self.watch_sampling = 1;
        self
    }

    /// Every denied packet is offered to the watch's budget, which is spent: the first
    /// seconds of a flood, before the agent's next read lowers the sampling.
    pub(crate) fn before_the_agent_samples(mut self) -> Self {
        self.watch_sampling = 1;
        self
    }

    pub(crate) fn median(&self, program: Program) -> f64 {
        median(&self.ns[program as usize])
    }

    /// The program's median over the empty program's median.
    pub(crate) fn ratio(&self, program: Program) -> f64 {
        self.median(program) / self.median(Program::Empty)
    }

    /// What the watch adds: the median over rounds of each round's difference between
    /// the allowlist with and without the watch (measured frame by frame together).
    pub(crate) fn watch_cost(&self) -> f64 {
        let on = &self.ns[Program::Allowlist as usize];
        let off = &self.ns[Program::AllowlistWatchOff as usize];
        let diffs: Vec<f64> = on.iter().zip(off).map(|(a, b)| a - b).collect();
        median(&diffs)
    }

    /// The program's quickest round over the empty program's quickest: the ratio on an
    /// uncontended machine (interference only ever adds time, and on a shared VM it
    /// adds more to a program that waits on memory than to the empty one).
    pub(crate) fn quickest_ratio(&self, program: Program) -> f64 {
        self.spread(program).0 / self.spread(Program::Empty).0
    }

    /// The spread of the allowlist program's rounds, as (min, max).
    pub(crate) fn spread(&self, program: Program) -> (f64, f64) {
        let v = &self.ns[program as usize];
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(0.0, f64::max);
        (min, max)
    }
}

/// Kernel memory of one of the allowlist program's maps (`memlock` in fdinfo).
pub(crate) struct MapMemory {
    pub name: String,
    pub bytes: u64,
}

pub(crate) struct Report {
    pub frames: usize,
    pub repeat: u32,
    pub rounds: usize,
    pub cases: Vec<Case>,
    pub kernel_memory: Vec<MapMemory>,
    pub full_load: Option<FullLoad>,
    pub diff: Option<DiffApply>,
    pub json: Option<JsonParse>,
    pub memory: Option<Memory>,
    pub watch_read: Option<WatchRead>,
    pub flood: Option<crate::flood::FloodReport>,
    pub elapsed: Duration,
}

/// Reading the whole denied-source map, as the agent does.
pub(crate) struct WatchRead {
    pub entries: usize,
    /// Sorted.
    pub times: Vec<Duration>,
}

/// The empty program's cost in the figures the targets were set from
/// (TOOLCHAIN.md); see the method section for why it is lower here.
const REFERENCE_FLOOR_NS: f64 = 26.0;

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl Report {
    pub(crate) fn new(frames: usize, repeat: u32, rounds: usize) -> Self {
        Self {
            frames,
            repeat,
            rounds,
            cases: Vec::new(),
            kernel_memory: Vec::new(),
            full_load: None,
            diff: None,
            json: None,
            memory: None,
            watch_read: None,
            flood: None,
            elapsed: Duration::ZERO,
        }
    }

    /// The figures: decision cost per packet, then the refresh figures.
    pub(crate) fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "| case | list | empty | textbook | allowlist | without watch | textbook / empty | allowlist / empty | without watch / empty | target | | allowlist / empty, quickest rounds | allowlist − empty | watch (with − without) | budget at a 26 ns floor |"
        );
        let _ = writeln!(
            t,
            "|---|---|--:|--:|--:|--:|--:|--:|--:|---|---|--:|--:|--:|--:|"
        );
        for c in &self.cases {
            let ratio = c.ratio(Program::Allowlist);
            let (target, verdict, budget) = match c.target {
                Some((_, limit)) => (
                    format!("≤ {limit:.1}×"),
                    if ratio <= limit { "met" } else { "missed" },
                    format!("{:.1} ns", (limit - 1.0) * REFERENCE_FLOOR_NS),
                ),
                None => ("beside textbook".to_owned(), "", String::new()),
            };
            let _ = writeln!(
                t,
                "| {} | {} | {:.1} ns | {:.1} ns | {:.1} ns | {:.1} ns | {:.2}× | {:.2}× | {:.2}× | {target} | {verdict} | {:.2}× | {:.1} ns | {:+.1} ns | {budget} |",
                c.name,
                c.list,
                c.median(Program::Empty),
                c.median(Program::Textbook),
                c.median(Program::Allowlist),
                c.median(Program::AllowlistWatchOff),
                c.ratio(Program::Textbook),
                ratio,
                c.ratio(Program::AllowlistWatchOff),
                c.quickest_ratio(Program::Allowlist),
                c.median(Program::Allowlist) - c.median(Program::Empty),
                c.watch_cost(),
            );
        }
        let _ = writeln!(t);
        let _ = writeln!(t, "| refresh figure | measured | target | |");
        let _ = writeln!(t, "|---|--:|---|---|");
        if let Some(d) = &self.diff {
            let m = median_duration(&d.times);
            let _ = writeln!(
                t,
                "| applying a {}-change diff to 100,000 IPv4 prefixes (median of {}; max {}) | {} | < 10 ms | {} |",
                d.report.added + d.report.removed + d.report.changed,
                d.times.len(),
                ms(*d.times.last().expect("rounds")),
                ms(m),
                if m < Duration::from_millis(10) {
                    "met"
                } else {
                    "missed"
                }
            );
        }
        if let Some(f) = &self.full_load {
            let _ = writeln!(
                t,
                "| full load of 100,000 IPv4 prefixes into empty maps | {} | < 2 s | {} |",
                ms(f.time),
                if f.time < Duration::from_secs(2) {
                    "met"
                } else {
                    "missed"
                }
            );
        }
        if let Some(m) = &self.memory {
            let _ = writeln!(
                t,
                "| agent resident memory (VmRSS) holding {} prefixes | {:.1} MiB | < 50 MB | {} |",
                m.prefixes,
                m.vm_rss as f64 / 1024.0,
                if m.vm_rss * 1024 < 50_000_000 {
                    "met"
                } else {
                    "missed"
                }
            );
        }
        if let Some(w) = &self.watch_read {
            let _ = writeln!(
                t,
                "| reading the denied-source map ({} entries; median of {}, max {}) | {} | | |",
                w.entries,
                w.times.len(),
                ms(*w.times.last().expect("reads")),
                ms(median_duration(&w.times)),
            );
        }
        if let Some(j) = &self.json {
            let _ = writeln!(
                t,
                "| parsing a {:.1} MB AWS-shaped ip-ranges.json ({} entries selected) | {} | | |",
                j.bytes as f64 / 1e6,
                j.entries,
                ms(median_duration(&j.times))
            );
        }
        if let Some(f) = &self.flood {
            let _ = writeln!(t);
            t.push_str(&crate::flood::section(f));
        }
        t
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# allowlist benchmarks\n");
        let _ = writeln!(
            out,
            "Written by `cargo xtask bench` ({:.0} s, {}). Every figure in the tables comes from this one run; the notes after them quote measurements made while the fast path was developed, marked as such.\n",
            self.elapsed.as_secs_f64(),
            kernel_release()
        );
        let _ = writeln!(out, "{}", self.table());
        let _ = writeln!(out, "{}", self.details());
        if let Some(f) = &self.flood {
            let _ = writeln!(out, "{}", crate::flood::spread(f));
        }
        out.push_str(METHOD);
        out
    }

    fn details(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "## Spread\n");
        let _ = writeln!(
            t,
            "Lowest and highest round of each program (ns per packet; {} rounds of {} frames × {} runs):\n",
            self.rounds, self.frames, self.repeat
        );
        let _ = writeln!(
            t,
            "| case | list | empty | textbook | allowlist | without watch |"
        );
        let _ = writeln!(t, "|---|---|--:|--:|--:|--:|");
        for c in &self.cases {
            let cell = |p| {
                let (lo, hi) = c.spread(p);
                format!("{lo:.1}–{hi:.1}")
            };
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} |",
                c.name,
                c.list,
                cell(Program::Empty),
                cell(Program::Textbook),
                cell(Program::Allowlist),
                cell(Program::AllowlistWatchOff)
            );
        }
        let _ = writeln!(t, "\n## Map operations and memory\n");
        if let Some(f) = &self.full_load {
            let r = &f.report;
            let _ = writeln!(
                t,
                "- Full load: {} trie insertions ({} map syscalls in all), {} fast-table codes written (memory stores: every /24 and IPv6 /16 of the fresh tables set to deny by the rebuild, then the list's), {} chunks filled.",
                r.added,
                r.map_operations(),
                r.fast.codes_written,
                r.fast.chunks_filled,
            );
        }
        if let Some(d) = &self.diff {
            let r = &d.report;
            let _ = writeln!(
                t,
                "- 10-change diff: {} added, {} removed, {} moved to another rule: {} trie operations, {} codes written, {} chunks filled, {} chunks freed.",
                r.added,
                r.removed,
                r.changed,
                r.map_operations(),
                r.fast.codes_written,
                r.fast.chunks_filled,
                r.fast.chunks_freed
            );
        }
        if let Some(m) = &self.memory {
            let _ = writeln!(
                t,
                "- Agent: VmRSS {} kB (RssAnon {} kB, RssFile {} kB), peak VmHWM {} kB; started and loaded in {:.1} s.",
                m.vm_rss,
                m.rss_anon,
                m.rss_file,
                m.vm_hwm,
                m.startup.as_secs_f64()
            );
        }
        if !self.kernel_memory.is_empty() {
            let total: u64 = self.kernel_memory.iter().map(|m| m.bytes).sum();
            let _ = writeln!(
                t,
                "- Kernel memory of the allowlist program's maps with 100,000 IPv4 + 10,000 IPv6 prefixes (fdinfo `memlock`), {} in all:",
                mib(total)
            );
            for m in &self.kernel_memory {
                let _ = writeln!(t, "  - {}: {}", m.name, mib(m.bytes));
            }
        }
        t
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| format!("Linux {}", r.trim()))
        .unwrap_or_else(|_| "Linux".to_owned())
}

/// `memlock` of every map of the allowlist program this process holds (the last
/// instance loaded, by map name).
pub(crate) fn kernel_memory() -> Result<Vec<MapMemory>> {
    let mut by_name = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fdinfo")? {
        let entry = entry?;
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (Some(id), Some(bytes)) = (field("map_id:"), field("memlock:")) else {
            continue;
        };
        let Ok(map) = aya::maps::MapInfo::from_id(id as u32) else {
            continue;
        };
        let name = map.name_as_str().unwrap_or("?").to_owned();
        if allowlist_common::maps::ALL.contains(&name.as_str()) {
            // The newest instance (highest id) wins.
            let slot = by_name.entry(name).or_insert((id, bytes));
            if id > slot.0 {
                *slot = (id, bytes);
            }
        }
    }
    Ok(by_name
        .into_iter()
        .map(|(name, (_, bytes))| MapMemory { name, bytes })
        .collect())
}

const METHOD: &str = include_str!("method.md");
