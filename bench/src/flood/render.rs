//! The flood comparison's tables (printed, and written to results.md).

use std::{fmt::Write as _, time::Duration};

use super::{Attach, Case, CaseResult, Family, Filter, FloodReport, Receiver, Sample, Size};
use crate::{median, median_duration};

/// The list a case's filter holds, the flooded family's prefixes first.
fn list_label(size: Option<Size>, family: Family) -> &'static str {
    match (size, family) {
        (None, _) => "–",
        (Some(Size::Small), _) => "50 IPv4",
        (Some(Size::Large), Family::V4) => "100,000 IPv4 (+ 10,000 IPv6)",
        (Some(Size::Large), Family::V6) => "10,000 IPv6 (+ 100,000 IPv4)",
    }
}

/// The median of one figure over a case's rounds.
fn med(case: &CaseResult, figure: impl Fn(&Sample) -> f64) -> f64 {
    median(&case.samples.iter().map(figure).collect::<Vec<_>>())
}

fn ratio(value: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 => times(value / b),
        _ => "–".to_owned(),
    }
}

/// A ratio with three significant digits (at least two decimals).
fn times(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.1}×")
    } else if r >= 0.1 {
        format!("{r:.2}×")
    } else {
        let decimals = (-r.log10()).ceil() as usize + 2;
        format!("{r:.decimals$}×")
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// The two tables: the flood, and the time to load and change the lists.
pub(crate) fn table(report: &FloodReport) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| flood: filter | sources | list | receive path on | reached the veth | dropped by the filter (no filter: taken by the stack) | ÷ no filter | ÷ nftables | backlog losses (share of what reached the veth) | softirq per packet | ÷ no filter | ÷ nftables | receiving CPU in softirq |"
    );
    let _ = writeln!(t, "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for case in &report.cases {
        // The baselines: no filter, and nftables holding the same list, both flooded
        // from the same family and received on the same CPU.
        let base = report.case(Case {
            filter: Filter::None,
            size: None,
            ..case.case
        });
        let base_handled = base.map(|c| med(c, Sample::handled));
        let base_softirq = base.map(|c| med(c, |s| s.softirq_ns));
        let nft = report.case(Case {
            filter: Filter::Nftables,
            ..case.case
        });
        let handled = med(case, Sample::handled);
        let softirq = med(case, |s| s.softirq_ns);
        let (nft_handled, nft_softirq) = match (case.case.filter, nft) {
            (Filter::None | Filter::Nftables, _) | (_, None) => (None, None),
            (_, Some(n)) => (
                Some(med(n, Sample::handled)),
                Some(med(n, |s| s.softirq_ns)),
            ),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {:.2} Mpps | {:.2} Mpps | {} | {} | {:.1} % | {:.0} ns | {} | {} | {:.0} % |",
            case.case.filter.label(),
            case.case.family.label(),
            list_label(case.case.size, case.case.family),
            case.case.receiver.label(),
            med(case, |s| s.offered) / 1e6,
            handled / 1e6,
            if case.case.filter == Filter::None {
                "1.00×".to_owned()
            } else {
                ratio(handled, base_handled)
            },
            ratio(handled, nft_handled),
            med(case, Sample::loss_share) * 100.0,
            softirq,
            if case.case.filter == Filter::None {
                "1.00×".to_owned()
            } else {
                ratio(softirq, base_softirq)
            },
            ratio(softirq, nft_softirq),
            med(case, |s| s.softirq_share) * 100.0,
        );
    }
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "| list change (100,000 IPv4 + 10,000 IPv6 prefixes) | nftables: add and delete elements (`nft -f`) | nftables: flush the set, add the new list (`nft -f`) | ipset (`ipset restore`) | allowlist (`sync::apply`) | allowlist ÷ nftables elements | allowlist ÷ nftables reload | allowlist ÷ ipset |"
    );
    let _ = writeln!(t, "|---|--:|--:|--:|--:|--:|--:|--:|");
    for change in &report.changes {
        let a = median_duration(&change.allowlist);
        let i = median_duration(&change.ipset);
        let r = median_duration(&change.nft_replace);
        let div = |x: Duration, y: Duration| times(x.as_secs_f64() / y.as_secs_f64());
        let (nft, nft_ratio) = match (change.nft_gave_up, change.nft.is_empty()) {
            (_, false) => {
                let n = median_duration(&change.nft);
                (ms(n), div(a, n))
            }
            (Some(limit), true) => (
                format!("not finished in {:.0} s", limit.as_secs_f64()),
                format!("< {}", div(a, limit)),
            ),
            (None, true) => ("–".to_owned(), "–".to_owned()),
        };
        let _ = writeln!(
            t,
            "| {} prefixes ({} added, {} removed) | {nft} | {} | {} | {} | {nft_ratio} | {} | {} |",
            group(change.size),
            group(change.size / 2),
            group(change.size - change.size / 2),
            ms(r),
            ms(i),
            ms(a),
            div(a, r),
            div(a, i),
        );
    }
    for size in [Size::Small, Size::Large] {
        let load = |filter| {
            report
                .case(Case {
                    filter,
                    size: Some(size),
                    family: Family::V4,
                    receiver: Receiver::OwnCpu,
                })
                .filter(|c| !c.loads.is_empty())
                .map(|c| median_duration(&c.loads))
        };
        if let (Some(n), Some(i), Some(a)) = (
            load(Filter::Nftables),
            load(Filter::Iptables),
            load(Filter::Allowlist(Attach::Generic)),
        ) {
            let _ = writeln!(
                t,
                "| loading the {} list into an empty filter | {} (the table) | | {} (with the rule) | {} | {} | | {} |",
                list_label(Some(size), Family::V4),
                ms(n),
                ms(i),
                ms(a),
                times(a.as_secs_f64() / n.as_secs_f64()),
                times(a.as_secs_f64() / i.as_secs_f64()),
            );
        }
    }
    t
}

/// 50000 → "50,000".
fn group(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The conditions of this run, then the tables.
pub(crate) fn section(report: &FloodReport) -> String {
    let mut t = String::new();
    // The sender's rate means different things in the two receive paths: each gets
    // its own range.
    let reached = |receiver: Receiver| {
        let sent: Vec<f64> = report
            .cases
            .iter()
            .filter(|c| c.case.receiver == receiver)
            .flat_map(|c| c.samples.iter().map(|s| s.offered))
            .collect();
        let (lo, hi) = sent.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &s| {
            (lo.min(s), hi.max(s))
        });
        format!(
            "{:.2}–{:.2} Mpps (median {:.2})",
            lo / 1e6,
            hi / 1e6,
            median(&sent) / 1e6
        )
    };
    let pace = match report.rate {
        Some(rate) => format!(
            ", paced to at most {:.3} Mpps (`--flood-rate {rate}`)",
            rate as f64 / 1e6
        ),
        None => ", as fast as it can".to_owned(),
    };
    let _ = writeln!(t, "## Flood comparison\n");
    let _ = writeln!(
        t,
        "Measured in {:.0} s: {} rounds of every case, {:.0} s windows, {} distinct random IPv4 sources and as many IPv6 ones, none of them listed. The sender is one thread pinned to CPU {}{pace}. The receive path runs in one of two places. On its own CPU: RPS on the server's veth moves it to CPU {}, so that the filters and the stack run on a CPU of their own; there XDP runs only in generic (skb) mode (native veth XDP runs in the veth's NAPI on the sending CPU, before RPS), and every filter runs on the same CPU at the same point of the same path; the sender reached {}. On the sender's CPU: no RPS, the veth delivers each frame in the sending CPU's own softirq, with no interrupts between CPUs, and the sender slows down by what the receive path costs; the allowlist is measured there in native mode too; the sender reached {}. Generic XDP pays for an skb (and here a copy of the frame to make XDP headroom) before the program runs; native XDP on a veth still receives the sender's skb, but on a real NIC it would run before any skb exists. netdev_max_backlog = {}. See \"How the flood comparison is measured\" below.\n",
        report.elapsed.as_secs_f64(),
        report.rounds,
        report.window.as_secs_f64(),
        report.sources,
        report.sender_cpu,
        report.receive_cpu,
        reached(Receiver::OwnCpu),
        reached(Receiver::SenderCpu),
        report.max_backlog,
    );
    t.push_str(&table(report));
    t
}

/// The flood figures of every round.
pub(crate) fn spread(report: &FloodReport) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "## Flood rounds\n");
    let _ = writeln!(
        t,
        "Per round (dropped or taken by the stack, Mpps / softirq ns per packet / backlog losses as softnet_stat counts them for the receiving CPU, every interface, Mpps):\n"
    );
    let _ = writeln!(t, "| filter | sources | list | receive path on | rounds |");
    let _ = writeln!(t, "|---|---|---|---|---|");
    for case in &report.cases {
        let rounds: Vec<String> = case
            .samples
            .iter()
            .map(|s| {
                format!(
                    "{:.2} / {:.0} / {:.3}",
                    s.handled() / 1e6,
                    s.softirq_ns,
                    s.softnet_lost / 1e6
                )
            })
            .collect();
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} |",
            case.case.filter.label(),
            case.case.family.label(),
            list_label(case.case.size, case.case.family),
            case.case.receiver.label(),
            rounds.join("; ")
        );
    }
    t
}
