//! Decision cost per packet: the allowlist program and the two baselines judge the
//! same frames through BPF_PROG_TEST_RUN.
//!
//! BPF_PROG_TEST_RUN runs one frame `repeat` times per call and reports the mean time
//! per run (whole nanoseconds, truncated by the kernel). A case is a set of distinct
//! frames (one per source address); each frame runs `repeat` times and the case's
//! figure is the mean over its frames, every frame weighted by the same repeat count.
//! A round measures every case on every program back to back; the figures are
//! medians over rounds. The allowlist program is measured beside a second instance
//! loaded without the denied-source watch, frame by frame.
//!
//! Every program is attached (generic XDP) to a dummy interface of its own (one end of a
//! veth pair, down, so that nothing else runs through it) in a throwaway network namespace while it is measured. XDP programs run through the
//! kernel's XDP dispatcher; BPF_PROG_TEST_RUN adds a program that is not attached
//! anywhere to the dispatcher for the call and removes it afterwards, and each change
//! waits for an RCU grace period (milliseconds). Attached, the program stays in the
//! dispatcher, the calls cost microseconds, and the program is called the way a
//! driver calls it.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use allowlist_tests::netns::{Netns, enter, unique_id};
use allowlist_user::{LoadOptions, Maps, load_unpinned, resync};
use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{LpmTrie, lpm_trie::Key},
    programs::{TestRun, TestRunOptions, Xdp, XdpMode},
};
use ipnet::IpNet;

/// The baselines, built by build.rs from `allowlist-bench-ebpf`.
static BASELINES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/allowlist-bench"));

pub(crate) const XDP_DROP: u32 = 1;
pub(crate) const XDP_PASS: u32 = 2;

const SERVER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    TcpSyn(u16),
    Udp(u16),
}

pub(crate) fn frame(src: IpAddr, shape: Shape) -> Vec<u8> {
    let eth = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let ip = match src {
        IpAddr::V4(src) => eth.ipv4(src.octets(), SERVER_V4.octets(), 64),
        IpAddr::V6(src) => eth.ipv6(src.octets(), SERVER_V6.octets(), 64),
    };
    let mut out = Vec::new();
    match shape {
        Shape::TcpSyn(port) => {
            let b = ip.tcp(40000, port, 1, 64240).syn();
            b.write(&mut out, &[]).expect("build a TCP frame");
        }
        Shape::Udp(port) => {
            let b = ip.udp(40000, port);
            b.write(&mut out, b"ping").expect("build a UDP frame");
        }
    }
    out
}

/// The program under test and its two baselines, one instance per allowlist.
pub(crate) struct Programs {
    /// Keeps the allowlist program loaded.
    allowlist: Ebpf,
    /// Also keeps the map descriptors open (the kernel-memory figures read their
    /// fdinfo).
    maps: Maps,
    /// The allowlist program loaded without the denied-source watch (the verifier
    /// removes its code), with maps of its own holding the same list.
    unwatched: Ebpf,
    _unwatched_maps: Maps,
    baselines: Ebpf,
}

impl Programs {
    /// Loads the allowlist program (maps filled the way the agent fills them at start)
    /// and the baselines (the textbook trie filled with the same prefixes).
    pub(crate) fn load(list: &BTreeMap<IpNet, u32>) -> Result<Self> {
        if BASELINES.is_empty() {
            bail!("this build carries no baseline programs (built with AYA_BUILD_SKIP=1)");
        }
        let (allowlist, mut maps) =
            load_unpinned(&LoadOptions::default()).context("load the allowlist program")?;
        maps.set_ports(&[443].into())?;
        let report = resync(&mut maps, list).context("fill the allowlist maps")?;
        let (v4_chunks, v6_chunks) = maps.fast_chunks_in_use()?;
        eprintln!(
            "  fast tables: {v4_chunks} IPv4 and {v6_chunks} IPv6 chunks in use, {} left to the trie",
            report.fast.left_to_trie
        );
        let (unwatched, mut unwatched_maps) = load_unpinned(&LoadOptions {
            without_watch: true,
            ..LoadOptions::default()
        })
        .context("load the allowlist program without its watch")?;
        unwatched_maps.set_ports(&[443].into())?;
        resync(&mut unwatched_maps, list)
            .context("fill the maps of the allowlist program without its watch")?;

        let mut baselines = Ebpf::load(BASELINES).context("load the baseline object")?;
        for name in ["empty", "textbook"] {
            let program: &mut Xdp = baselines
                .program_mut(name)
                .with_context(|| format!("no program {name}"))?
                .try_into()?;
            program.load().with_context(|| format!("load {name}"))?;
        }
        let mut v4: LpmTrie<_, [u8; 4], u32> =
            LpmTrie::try_from(baselines.map_mut("TEXTBOOK_V4").context("TEXTBOOK_V4")?)?;
        for (net, rule) in list {
            if let IpNet::V4(n) = net {
                v4.insert(
                    &Key::new(n.prefix_len().into(), n.network().octets()),
                    rule,
                    0,
                )?;
            }
        }
        let mut v6: LpmTrie<_, [u8; 16], u32> =
            LpmTrie::try_from(baselines.map_mut("TEXTBOOK_V6").context("TEXTBOOK_V6")?)?;
        for (net, rule) in list {
            if let IpNet::V6(n) = net {
                v6.insert(
                    &Key::new(n.prefix_len().into(), n.network().octets()),
                    rule,
                    0,
                )?;
            }
        }
        Ok(Self {
            allowlist,
            maps,
            unwatched,
            _unwatched_maps: unwatched_maps,
            baselines,
        })
    }

    /// Sets the allowlist program's watch rate (records per second and CPU; 0: off).
    pub(crate) fn set_watch(&mut self, rate: u32) -> Result<()> {
        self.maps.set_watch(rate).context("set the watch rate")
    }

    /// Offers one denied packet in `one_in` to the allowlist program's watch.
    pub(crate) fn set_watch_sampling(&mut self, one_in: u32) -> Result<()> {
        self.maps
            .set_watch_sampling(one_in)
            .context("set the watch's sampling")
    }

    /// Runs every frame once through the allowlist program.
    pub(crate) fn run_once(&self, frames: &[Vec<u8>]) -> Result<()> {
        let program = self.program(Program::Allowlist);
        for frame in frames {
            crate::check_interrupted()?;
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(frame);
            program.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        }
        Ok(())
    }

    /// Reads the denied-source map `times` times: the number of entries and each
    /// read's duration.
    pub(crate) fn read_watch(&self, times: usize) -> Result<(usize, Vec<Duration>)> {
        let mut entries = 0;
        let mut durations = Vec::with_capacity(times);
        for _ in 0..times {
            let started = Instant::now();
            entries = self.maps.denied_sources()?.len();
            durations.push(started.elapsed());
        }
        durations.sort();
        Ok((entries, durations))
    }

    pub(crate) fn program(&self, which: Program) -> &Xdp {
        let (ebpf, name) = self.locate(which);
        ebpf.program(name)
            .expect("loaded above")
            .try_into()
            .expect("an XDP program")
    }

    /// Attaches `which` to `interface` (generic XDP), for as long as `self` lives.
    pub(crate) fn attach(&mut self, which: Program, interface: &str) -> Result<()> {
        let (_, name) = self.locate(which);
        let ebpf = match which {
            Program::Allowlist => &mut self.allowlist,
            Program::AllowlistWatchOff => &mut self.unwatched,
            Program::Empty | Program::Textbook => &mut self.baselines,
        };
        let program: &mut Xdp = ebpf.program_mut(name).expect("loaded above").try_into()?;
        program
            .attach(interface, XdpMode::Skb)
            .with_context(|| format!("attach {name} to {interface}"))?;
        Ok(())
    }

    fn locate(&self, which: Program) -> (&Ebpf, &'static str) {
        match which {
            Program::Empty => (&self.baselines, "empty"),
            Program::Textbook => (&self.baselines, "textbook"),
            Program::Allowlist => (&self.allowlist, allowlist_common::PROGRAM_NAME),
            Program::AllowlistWatchOff => (&self.unwatched, allowlist_common::PROGRAM_NAME),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Program {
    Empty,
    Textbook,
    /// With the denied-source watch on, at the case's rate.
    Allowlist,
    /// The same program loaded without the watch.
    AllowlistWatchOff,
}

impl Program {
    const ALL: [Program; 4] = [
        Program::Empty,
        Program::Textbook,
        Program::Allowlist,
        Program::AllowlistWatchOff,
    ];
}

/// Mean nanoseconds per run over `frames`, each run `repeat` times; fails unless
/// every frame got `expect` (so that a case measures the path it names).
pub(crate) fn measure(program: &Xdp, frames: &[Vec<u8>], repeat: u32, expect: u32) -> Result<f64> {
    let mut total_ns = 0u128;
    for frame in frames {
        total_ns += run_frame(program, frame, repeat, expect)?;
    }
    Ok(total_ns as f64 / frames.len() as f64)
}

/// Nanoseconds per run of one frame, run `repeat` times; fails unless it got `expect`.
fn run_frame(program: &Xdp, frame: &[u8], repeat: u32, expect: u32) -> Result<u128> {
    crate::check_interrupted()?;
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.repeat = repeat;
    let result = program.test_run(opts).context("BPF_PROG_TEST_RUN")?;
    if result.return_value != expect {
        bail!(
            "a frame returned {} where {expect} was expected",
            result.return_value
        );
    }
    Ok(result.duration.as_nanos())
}

impl Programs {
    /// Mean nanoseconds per run over `frames` of the allowlist program with its watch
    /// at `rate`, offered one denied packet in `sampling`, and of the one without the watch, frame by frame (each frame runs on
    /// both back to back, in alternating order), so that the two figures share the
    /// same moments of a busy machine: (with, without).
    pub(crate) fn measure_watch(
        &mut self,
        frames: &[Vec<u8>],
        repeat: u32,
        expect: u32,
        rate: u32,
        sampling: u32,
    ) -> Result<(f64, f64)> {
        self.set_watch(rate)?;
        self.set_watch_sampling(sampling)?;
        // A bucket that was empty is refilled at the next kernel tick: wait two ticks
        // at HZ=100 so that the rate holds from the first frame.
        std::thread::sleep(Duration::from_millis(25));
        let (mut with, mut without) = (0u128, 0u128);
        for (i, frame) in frames.iter().enumerate() {
            let order = if i % 2 == 0 {
                [Program::Allowlist, Program::AllowlistWatchOff]
            } else {
                [Program::AllowlistWatchOff, Program::Allowlist]
            };
            for program in order {
                let ns = run_frame(self.program(program), frame, repeat, expect)?;
                if program == Program::Allowlist {
                    with += ns;
                } else {
                    without += ns;
                }
            }
        }
        let n = frames.len() as f64;
        Ok((with as f64 / n, without as f64 / n))
    }
}

/// Runs `f` on a thread inside a throwaway network namespace in which every program of
/// `instances` is attached to an interface of its own (see the module comment).
pub(crate) fn run_attached(
    instances: &mut [Programs],
    f: impl FnOnce(&mut [Programs]) -> Result<()> + Send,
) -> Result<()> {
    let netns = Netns::new(&format!("{}-xdp", unique_id()));
    let mut interfaces = Vec::new();
    // veth pairs (this kernel has no dummy devices): one end for each program.
    for i in 0..instances.len() * Program::ALL.len() {
        let (name, peer) = (format!("xdp{i}"), format!("xdp{i}p"));
        netns.ip(&["link", "add", &name, "type", "veth", "peer", "name", &peer]);
        interfaces.push(name);
    }
    let path = netns.path();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                enter(&path).context("join the benchmark namespace")?;
                let mut names = interfaces.iter();
                for programs in instances.iter_mut() {
                    for program in Program::ALL {
                        programs.attach(program, names.next().expect("one each"))?;
                    }
                }
                f(instances)
            })
            .join()
            .expect("the measuring thread panicked")
    })
}
