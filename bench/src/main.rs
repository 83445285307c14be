//! `cargo xtask bench`: what the allowlist costs per packet, next to an empty XDP
//! program and the textbook one-LPM-lookup filter measured in the same run, and what
//! a refresh costs the agent. Prints a table and writes it, with the method, to
//! `target/bench/results.md`. Needs root (BPF_PROG_TEST_RUN, network namespaces).

mod agent;
mod decision;
mod flood;
mod lists;
mod refresh;
mod report;

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;

use crate::{
    decision::{Program, Programs, Shape, XDP_DROP, XDP_PASS},
    report::{Case, Report},
};

#[derive(Parser)]
#[command(about = "allowlist benchmarks (run through `cargo xtask bench`)")]
struct Args {
    /// Where the results are written (Markdown).
    #[arg(long, default_value = "target/bench/results.md")]
    out: PathBuf,
    /// The agent binary whose memory is measured (default: `allowlist` beside this
    /// executable).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Rounds per decision case; figures are medians over rounds.
    #[arg(long, default_value_t = 11)]
    rounds: usize,
    /// Distinct source addresses (frames) per decision case.
    #[arg(long, default_value_t = 1024)]
    frames: usize,
    /// Runs of each frame per BPF_PROG_TEST_RUN call.
    #[arg(long, default_value_t = 1000)]
    repeat: u32,
    /// Rounds of each flood case; figures are medians over rounds.
    #[arg(long, default_value_t = 5)]
    flood_rounds: usize,
    /// Seconds each flood reading lasts (after a one-second warm-up).
    #[arg(long, default_value_t = 3.0)]
    flood_window: f64,
    /// Frames per second the flood's sender sends at most (default: as many as it
    /// can). At a rate every filter keeps up with, their CPU time per packet compares
    /// at equal load in both receive paths.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    flood_rate: Option<u64>,
    /// AWS's published ip-ranges.json, whose IPv6 prefixes make one more IPv6 list of
    /// the decision part (skipped when the file is missing).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/realdocs/aws-ip-ranges.json"))]
    aws_ip_ranges: PathBuf,
    /// Measure only these parts (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Decision,
    Refresh,
    Agent,
    Flood,
}

/// List sizes of the IPv4 decision cases; the IPv6 list has `V6_PREFIXES`.
const V4_SIZES: [usize; 3] = [10, 1_000, 100_000];
const V6_PREFIXES: usize = 10_000;
const REFRESH_PREFIXES: usize = 100_000;
const DIFF_CHANGES: usize = 10;
const AWS_DOCUMENT_BYTES: usize = 2_300_000;

/// Set by SIGINT or SIGTERM: the run stops at the next frame or poll, and the guards
/// remove the namespaces, the agent and its pins on the way out.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Fails once the run has been interrupted.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn main() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let handler = interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    let args = Args::parse();
    if let Err(err) = run(&args) {
        eprintln!("allowlist-bench: {err:#}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmarks load XDP programs and create network namespaces: run as root");
    }
    let agent = match &args.agent {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("allowlist"),
    };
    let started = Instant::now();
    let mut report = Report::new(args.frames, args.repeat, args.rounds);
    let wanted = |part| args.only.is_empty() || args.only.contains(&part);
    if wanted(Part::Decision) {
        decision_cases(args, &mut report)?;
    }
    let mut rng = lists::rng(0x5eed_0002);
    let big = lists::v4_aggregated(&mut rng, REFRESH_PREFIXES, 16..=32);
    if wanted(Part::Refresh) {
        eprintln!("refresh: full load, diff, JSON parse");
        report.full_load = Some(refresh::full_load(&big, 3)?);
        report.diff = Some(refresh::diff_apply(&mut rng, &big, DIFF_CHANGES, 10)?);
        report.json = Some(refresh::json_parse(&mut rng, AWS_DOCUMENT_BYTES, 10)?);
    }
    if wanted(Part::Agent) {
        eprintln!(
            "agent memory: `{} run` with {REFRESH_PREFIXES} prefixes",
            agent.display()
        );
        let document = lists::text_document(&big);
        report.memory = Some(agent::resident_memory(&agent, &document)?);
    }
    if wanted(Part::Flood) {
        if args.flood_rounds == 0 || args.flood_window.is_nan() || args.flood_window <= 0.0 {
            bail!("--flood-rounds and --flood-window must be positive");
        }
        report.flood = Some(flood::run(
            args.flood_rounds,
            Duration::from_secs_f64(args.flood_window),
            args.flood_rate,
        )?);
    }

    report.elapsed = started.elapsed();
    let text = report.render();
    println!("{}", report.table());
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, text)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// TCP/443 SYN frames from `addrs`, one each.
fn v6_frames(addrs: Vec<std::net::Ipv6Addr>) -> Vec<Vec<u8>> {
    addrs
        .into_iter()
        .map(|a| decision::frame(IpAddr::V6(a), Shape::TcpSyn(443)))
        .collect()
}

/// Loads the programs with each list and measures every decision case.
fn decision_cases(args: &Args, report: &mut Report) -> Result<()> {
    let mut rng = lists::rng(0x5eed_a110);
    let v6 = lists::v6_prefixes(&mut rng, V6_PREFIXES, 32..=64);
    let v6_members = lists::Membership::new(&v6);
    let mut cases = Vec::new();
    let mut instances = Vec::new();
    // Distinct denied sources enough to fill the watch's map, for the read figure.
    let last = V4_SIZES.len() - 1;
    let mut fill = Vec::new();
    for (i, size) in V4_SIZES.into_iter().enumerate() {
        let v4 = lists::v4_prefixes(&mut rng, size, 16..=32);
        let members = lists::Membership::new(&v4);
        let mut list = v4.clone();
        list.extend(v6.iter().map(|(k, v)| (*k, *v)));
        eprintln!("loading the programs with {size} IPv4 and {V6_PREFIXES} IPv6 prefixes");
        instances.push(Programs::load(&list)?);
        let v4_frames = |addrs: Vec<std::net::Ipv4Addr>, shape| {
            addrs
                .into_iter()
                .map(|a| decision::frame(IpAddr::V4(a), shape))
                .collect::<Vec<_>>()
        };
        let n = args.frames;
        let denied = lists::denied_v4(&mut rng, &members, n);
        let allowed = lists::allowed_v4(&mut rng, &v4, n);
        let label = format!("{size} IPv4 /16–/32");
        cases.push(Case::new(
            "TCP/443 SYN, denied IPv4 source",
            &label,
            i,
            v4_frames(denied.clone(), Shape::TcpSyn(443)),
            [XDP_PASS, XDP_DROP, XDP_DROP],
            Some(("denied", 2.0)),
        ));
        cases.push(Case::new(
            "TCP/443 SYN, allowed IPv4 source",
            &label,
            i,
            v4_frames(allowed, Shape::TcpSyn(443)),
            [XDP_PASS; 3],
            Some(("allowed", 2.0)),
        ));
        if size == *V4_SIZES.last().expect("sizes") {
            cases.push(
                Case::new(
                    "TCP/443 SYN, denied IPv4 source, a flood before the agent samples it",
                    &label,
                    i,
                    v4_frames(denied.clone(), Shape::TcpSyn(443)),
                    [XDP_PASS, XDP_DROP, XDP_DROP],
                    None,
                )
                .before_the_agent_samples(),
            );
            cases.push(
                Case::new(
                    "TCP/443 SYN, denied IPv4 source, every packet recorded by the watch",
                    &label,
                    i,
                    v4_frames(denied.clone(), Shape::TcpSyn(443)),
                    [XDP_PASS, XDP_DROP, XDP_DROP],
                    None,
                )
                .recording_every_packet(),
            );
            // The allowed sources again, split by the path the fast table takes.
            let (split, whole) = lists::allowed_v4_by_block(&mut rng, &v4, n);
            cases.push(Case::new(
                "  of which: /24 covered by one prefix (one array read)",
                &label,
                i,
                v4_frames(whole, Shape::TcpSyn(443)),
                [XDP_PASS; 3],
                Some(("allowed", 2.0)),
            ));
            cases.push(Case::new(
                "  of which: /24 split by longer prefixes (two array reads)",
                &label,
                i,
                v4_frames(split, Shape::TcpSyn(443)),
                [XDP_PASS; 3],
                Some(("allowed", 2.0)),
            ));
            let v6_denied = lists::denied_v6(&mut rng, &v6_members, n);
            let v6_allowed = lists::allowed_v6(&mut rng, &v6, n);
            let (v6_short, v6_long) = lists::allowed_v6_by_length(&mut rng, &v6, n, 48);
            let label6 = format!("{V6_PREFIXES} IPv6 /32–/64");
            cases.push(Case::new(
                "TCP/443 SYN, denied IPv6 source",
                &label6,
                i,
                v6_frames(v6_denied),
                [XDP_PASS, XDP_DROP, XDP_DROP],
                Some(("denied", 2.5)),
            ));
            cases.push(Case::new(
                "TCP/443 SYN, allowed IPv6 source",
                &label6,
                i,
                v6_frames(v6_allowed),
                [XDP_PASS; 3],
                Some(("allowed", 3.0)),
            ));
            cases.push(Case::new(
                "  of which: longest match /32–/48 (root + 1–3 chunks)",
                &label6,
                i,
                v6_frames(v6_short),
                [XDP_PASS; 3],
                Some(("allowed", 3.0)),
            ));
            cases.push(Case::new(
                "  of which: longest match /49–/64 (root + 1–3 chunks)",
                &label6,
                i,
                v6_frames(v6_long),
                [XDP_PASS; 3],
                Some(("allowed", 3.0)),
            ));
            cases.push(Case::new(
                "TCP/80 SYN (unprotected port)",
                &label,
                i,
                v4_frames(denied.clone(), Shape::TcpSyn(80)),
                [XDP_PASS; 3],
                Some(("unprotected", 1.3)),
            ));
            cases.push(Case::new(
                "UDP/443 (not TCP)",
                &label,
                i,
                v4_frames(denied, Shape::Udp(443)),
                [XDP_PASS; 3],
                Some(("unprotected", 1.3)),
            ));
            let fill_sources =
                lists::denied_v4(&mut rng, &members, allowlist_common::watch::CAPACITY);
            fill = v4_frames(fill_sources, Shape::TcpSyn(443));
        }
    }

    match lists::aws_v6_filled(&mut rng, &args.aws_ip_ranges, V6_PREFIXES) {
        Ok((aws, filled)) => {
            let members = lists::Membership::new(&filled);
            eprintln!(
                "loading the programs with {} of AWS's IPv6 prefixes and {} random ones",
                aws.len(),
                filled.len() - aws.len()
            );
            let instance = instances.len();
            instances.push(Programs::load(&filled)?);
            let label = format!(
                "AWS's {} IPv6 + {} random /32–/64",
                aws.len(),
                filled.len() - aws.len()
            );
            cases.push(Case::new(
                "TCP/443 SYN, denied IPv6 source in a /24 of a listed prefix",
                &label,
                instance,
                v6_frames(lists::denied_v6_near(&mut rng, &members, &aws, args.frames)),
                [XDP_PASS, XDP_DROP, XDP_DROP],
                Some(("denied", 2.5)),
            ));
            cases.push(Case::new(
                "TCP/443 SYN, allowed IPv6 source in one of AWS's prefixes",
                &label,
                instance,
                v6_frames(lists::allowed_v6(&mut rng, &aws, args.frames)),
                [XDP_PASS; 3],
                Some(("allowed", 3.0)),
            ));
        }
        Err(err) => eprintln!("skipping the cases of AWS's IPv6 list: {err:#}"),
    }

    eprintln!(
        "measuring {} cases x 3 programs (the allowlist with its watch on and off), {} rounds ({} frames x {} runs each)",
        cases.len(),
        args.rounds,
        args.frames,
        args.repeat
    );
    let mut watch_read = None;
    decision::run_attached(&mut instances, |instances| {
        for round in 0..args.rounds {
            for case in &mut cases {
                let programs = &mut instances[case.instance];
                let expect = case.expect[Program::Allowlist as usize];
                let (on, off) = programs
                    .measure_watch(
                        &case.frames,
                        args.repeat,
                        expect,
                        case.watch_rate,
                        case.watch_sampling,
                    )
                    .with_context(|| format!("{} on the allowlist", case.name))?;
                case.ns[Program::Allowlist as usize].push(on);
                case.ns[Program::AllowlistWatchOff as usize].push(off);
                for program in [Program::Empty, Program::Textbook] {
                    let xdp = programs.program(program);
                    let ns = decision::measure(
                        xdp,
                        &case.frames,
                        args.repeat,
                        case.expect[program as usize],
                    )
                    .with_context(|| format!("{} on {program:?}", case.name))?;
                    case.ns[program as usize].push(ns);
                }
            }
            eprintln!("  round {} of {} done", round + 1, args.rounds);
        }
        eprintln!(
            "filling the watch with {} denied sources and reading it",
            fill.len()
        );
        let programs = &mut instances[last];
        programs.set_watch(u32::MAX)?;
        programs.set_watch_sampling(1)?;
        programs.run_once(&fill)?;
        let (entries, times) = programs.read_watch(5)?;
        watch_read = Some(report::WatchRead { entries, times });
        Ok(())
    })?;
    report.watch_read = watch_read;
    report.kernel_memory = report::kernel_memory()?;
    report.cases = cases;
    Ok(())
}

/// Median of `values` (sorted copy).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn median_duration(values: &[Duration]) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    v[v.len() / 2]
}
