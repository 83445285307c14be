//! `allowlist denied`: the top denied sources of `denied.json`, and what each is.

use std::{
    cmp::Reverse,
    fmt::Write as _,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use serde::Serialize;

use super::{DeniedFile, Record};
use crate::{
    denied::senders::{Known, Why, minutes},
    store::rfc3339,
};

/// An IPv4 source as its address, an IPv6 source as its /64.
pub(crate) fn source_text(source: IpNet) -> String {
    match source {
        IpNet::V4(net) if net.prefix_len() == 32 => net.addr().to_string(),
        other => other.to_string(),
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Row {
    pub source: String,
    /// Denied packets since `first_seen`; an estimate if `estimated`.
    pub packets: u64,
    pub estimated: bool,
    /// At most this many of `packets` may be other sources' (see `denied.json`).
    pub overcount: u64,
    pub port: u16,
    #[serde(with = "rfc3339")]
    pub first_seen: SystemTime,
    #[serde(with = "rfc3339")]
    pub last_seen: SystemTime,
    /// What the source is, as a sentence (the most relevant thing known); empty when
    /// nothing is.
    pub what: String,
    /// Everything known, most relevant first.
    pub known: Vec<Known>,
}

impl Row {
    fn new(record: &Record) -> Self {
        Self {
            source: source_text(record.source),
            packets: record.packets,
            estimated: record.is_estimate(),
            overcount: record.overcount,
            port: record.port,
            first_seen: record.first_seen,
            last_seen: record.last_seen,
            what: record
                .known
                .first()
                .map(ToString::to_string)
                .unwrap_or_default(),
            known: record.known.clone(),
        }
    }
}

/// What `allowlist denied` shows.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// When the agent wrote the table, and last read the datapath.
    #[serde(with = "rfc3339")]
    pub written_at: SystemTime,
    #[serde(with = "rfc3339::option")]
    pub read_at: Option<SystemTime>,
    /// The share of the denied packets the datapath recorded between its last two
    /// reads: below 1, the counts are scaled up (estimates).
    pub recorded_share: Option<f64>,
    /// Sources are forgotten this long after they were last seen.
    pub keep_secs: u64,
    /// Only sources seen within this (all kept when `None`).
    pub since_secs: Option<u64>,
    /// Distinct sources in the table (seen within `since`).
    pub sources: usize,
    /// Of which known senders.
    pub known_senders: usize,
    /// Strangers that a full table let go since the agent started (the table keeps
    /// the `strangers_kept` with the most packets).
    pub strangers_forgotten: u64,
    pub strangers_kept: usize,
    /// The top sources by packets.
    pub top: Vec<Row>,
    /// Known senders not in `top`: a flood of strangers must not hide them.
    pub known_below_top: Vec<Row>,
}

/// The known senders among `rest`, at most `n`: first those still dropped (a source
/// listed in force now was dropped before a sync or by an older list: it passes now),
/// the most recently seen first, so that an old burst does not hide today's sender.
fn known_below(rest: &[&Record], n: usize) -> Vec<Row> {
    let mut known: Vec<&Record> = rest
        .iter()
        .copied()
        .filter(|r| !r.known.is_empty())
        .collect();
    known.sort_by_key(|r| {
        let passes_now = r.known.iter().any(|k| k.why() == Why::InForce);
        (
            passes_now,
            Reverse(r.last_seen),
            Reverse(r.packets),
            r.source,
        )
    });
    known.into_iter().take(n).map(Row::new).collect()
}

impl Report {
    /// The `top` sources of `file` seen within `since` of `now`.
    pub(crate) fn new(
        file: &DeniedFile,
        top: usize,
        since: Option<Duration>,
        now: SystemTime,
    ) -> Self {
        let cutoff = since.and_then(|d| now.checked_sub(d));
        let mut records: Vec<&Record> = (file.records.iter())
            .filter(|r| cutoff.is_none_or(|c| r.last_seen >= c))
            .collect();
        records.sort_by(|a, b| {
            (b.packets, b.last_seen, a.source).cmp(&(a.packets, a.last_seen, b.source))
        });
        let known_senders = records.iter().filter(|r| !r.known.is_empty()).count();
        let (shown, rest) = records.split_at(top.min(records.len()));
        Report {
            written_at: file.written_at,
            read_at: file.read_at,
            recorded_share: file.recorded_share,
            keep_secs: file.keep_secs,
            since_secs: since.map(|d| d.as_secs()),
            sources: records.len(),
            known_senders,
            strangers_forgotten: file.strangers_forgotten,
            strangers_kept: file.strangers_kept,
            top: shown.iter().map(|r| Row::new(r)).collect(),
            known_below_top: known_below(rest, top),
        }
    }

    /// The text `allowlist denied` prints.
    pub(crate) fn render(&self, now: SystemTime) -> String {
        let mut s = String::new();
        let ago = |t: SystemTime| {
            let d = now.duration_since(t).unwrap_or_default();
            humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
        };
        let window = match self.since_secs {
            Some(secs) => format!(
                "seen in the last {}",
                humantime::format_duration(Duration::from_secs(secs))
            ),
            None => format!(
                "kept for {} after they were last seen",
                humantime::format_duration(Duration::from_secs(self.keep_secs))
            ),
        };
        let _ = writeln!(
            s,
            "{} distinct denied sources ({window}), {} of them known senders{}",
            self.sources,
            self.known_senders,
            if self.strangers_forgotten > 0 {
                format!(
                    "; {} more strangers were let go (the table keeps the {} with the most packets)",
                    self.strangers_forgotten, self.strangers_kept
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            s,
            "(written by the agent {} ago{})",
            ago(self.written_at),
            self.read_at
                .map(|t| format!(", datapath read {} ago", ago(t)))
                .unwrap_or_default()
        );
        if let Some(share) = self.recorded_share.filter(|&s| s < 1.0) {
            let _ = writeln!(
                s,
                "(a flood: the datapath recorded {:.1}% of the denied packets at its last read; the counts of that read are scaled up, ≈)",
                share * 100.0
            );
        }
        if self.top.is_empty() {
            let _ = writeln!(s, "no denied source");
            return s;
        }
        let _ = writeln!(s);
        render_rows(&mut s, &self.top);
        if !self.known_below_top.is_empty() {
            let _ = writeln!(s, "\nknown senders below the top {}:", self.top.len());
            render_rows(&mut s, &self.known_below_top);
        }
        if self
            .top
            .iter()
            .chain(&self.known_below_top)
            .any(|r| r.estimated)
        {
            let _ = writeln!(
                s,
                "\n≈: an estimate (the datapath recorded part of a flood, or the source took the place of another in a full table)"
            );
        }
        s
    }
}

fn render_rows(s: &mut String, rows: &[Row]) {
    let _ = writeln!(
        s,
        "{:<24} {:>12} {:>5}  {:<16}  {:<16}  what it is",
        "source", "packets", "port", "first seen", "last seen"
    );
    for row in rows {
        let packets = if row.estimated {
            format!("≈{}", row.packets)
        } else {
            row.packets.to_string()
        };
        let what = if row.what.is_empty() {
            "nothing known"
        } else {
            &row.what
        };
        let _ = writeln!(
            s,
            "{:<24} {:>12} {:>5}  {:<16}  {:<16}  {what}",
            row.source,
            packets,
            row.port,
            minutes(row.first_seen),
            minutes(row.last_seen)
        );
        for other in row.known.iter().skip(1) {
            let _ = writeln!(s, "{:<83}  also {other}", "");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        config::DEFAULT_DENIED_KEEP as DEFAULT_KEEP,
        denied::senders::IndexBuilder,
        denied::{DeniedWatch, Observation, Recording},
    };

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000 + secs)
    }

    fn obs(source: &str, packets: u64, last: u64) -> Observation {
        Observation {
            source: source.parse().unwrap(),
            packets,
            port: 8443,
            first_seen: t(0),
            last_seen: t(last),
        }
    }

    /// A flood of 300 strangers with 50 packets each, a github-hooks address with 3
    /// and an address of partner's refused update with 2; the stranger table holds 100.
    fn file() -> DeniedFile {
        let config = crate::config::parse(
            "interfaces = [\"eth0\"]\n[[provider]]\nname = \"partner\"\n[[provider.source]]\nurl = \"https://ranges.example.net/ips.txt\"\n",
            Path::new("test.toml"),
        )
        .unwrap();
        let mut builder = IndexBuilder::from_config(&config);
        builder.removed_range(
            "partner",
            "partner/0",
            "140.82.115.0/24".parse().unwrap(),
            t(0),
        );
        builder.refused_update(
            "partner",
            "partner/0",
            t(0),
            "shrink",
            &["198.51.100.0/24".parse().unwrap()],
        );
        let mut watch = DeniedWatch::with_capacity(DEFAULT_KEEP, builder.build(), 10, 100);
        let mut reads: Vec<Observation> = (0..300u64)
            .map(|i| obs(&format!("203.0.113.{}/32", i % 256), 50, 100))
            .collect();
        reads.truncate(256);
        reads.extend((0..44u64).map(|i| obs(&format!("192.0.2.{i}/32"), 50, 100)));
        reads.push(obs("140.82.115.7/32", 3, 50));
        reads.push(obs("198.51.100.7/32", 2, 3600));
        reads.push(obs("2001:db8:1:2::/64", 60, 10));
        let totals = Recording {
            recorded: reads.iter().map(|o| o.packets).sum(),
            unrecorded: 0,
        };
        watch.observe(&reads, Some(totals), t(3600));
        watch.file(t(3601))
    }

    /// Below the top, the known senders still dropped come before those that pass
    /// now (listed in force, dropped before a sync), however many packets those sent.
    #[test]
    fn known_senders_still_dropped_come_first_below_the_top() {
        let config = crate::config::parse(
            "interfaces = [\"eth0\"]\n[[provider]]\nname = \"partner\"\n[[provider.source]]\nurl = \"https://ranges.example.net/ips.txt\"\n",
            Path::new("test.toml"),
        )
        .unwrap();
        let mut builder = IndexBuilder::from_config(&config);
        builder.in_force(
            "partner",
            "partner/0",
            &["192.0.2.0/24".parse().unwrap()],
            Some(t(0)),
        );
        builder.refused_update(
            "partner",
            "partner/0",
            t(10),
            "shrink",
            &["198.51.100.0/24".parse().unwrap()],
        );
        let mut watch = DeniedWatch::new(DEFAULT_KEEP, builder.build());
        let reads = [
            obs("203.0.113.9/32", 900, 100),
            obs("192.0.2.7/32", 500, 200),
            obs("198.51.100.7/32", 2, 50),
        ];
        watch.observe(&reads, None, t(300));
        let report = Report::new(&watch.file(t(300)), 1, None, t(300));
        assert_eq!(report.top[0].source, "203.0.113.9");
        let below: Vec<&str> = (report.known_below_top.iter())
            .map(|r| r.source.as_str())
            .collect();
        assert_eq!(below, ["198.51.100.7"], "only `top` of them");
        let report = Report::new(&watch.file(t(300)), 2, None, t(300));
        assert_eq!(report.top[1].source, "192.0.2.7");
        assert_eq!(report.known_below_top.len(), 1);
        assert_eq!(report.known_below_top[0].source, "198.51.100.7");
    }

    #[test]
    fn known_senders_are_never_hidden_by_a_flood_of_strangers() {
        let file = file();
        let report = Report::new(&file, 10, None, t(3700));
        assert_eq!(report.top.len(), 10);
        assert_eq!(report.top[0].source, "2001:db8:1:2::/64");
        assert_eq!(report.sources, 102);
        assert_eq!(report.known_senders, 2);
        assert_eq!(report.strangers_forgotten, 201);
        let below: Vec<&str> = (report.known_below_top.iter())
            .map(|r| r.source.as_str())
            .collect();
        // The most recently seen first.
        assert_eq!(below, ["198.51.100.7", "140.82.115.7"]);
        let text = report.render(t(3700));
        assert!(
            text.starts_with("102 distinct denied sources (kept for 7days after they were last seen), 2 of them known senders; 201 more strangers were let go (the table keeps the 100 with the most packets)\n"),
            "{text}"
        );
        assert!(
            text.contains("\nknown senders below the top 10:\n"),
            "{text}"
        );
        let github = (text.lines())
            .find(|l| l.starts_with("140.82.115.7 "))
            .expect("listed");
        assert!(
            github.ends_with(&format!(
                "removed from partner's list at {} (140.82.115.0/24)",
                minutes(t(0))
            )),
            "{github}"
        );
        assert!(
            text.contains(
                "also listed by preset github-hooks (140.82.112.0/20), which is not configured"
            ),
            "{text}"
        );
        assert!(
            text.contains("refused by the shrink guard (198.51.100.0/24)"),
            "{text}"
        );
        assert!(text.contains("  8443  "), "the port: {text}");
        assert!(text.contains("nothing known"), "{text}");
        assert!(text.contains(" ≈"), "the overcounted strangers: {text}");
        assert!(!text.contains("a flood:"), "all were recorded: {text}");
        let flooded = Report {
            recorded_share: Some(0.125),
            ..report
        };
        assert!(
            flooded.render(t(3700)).contains("\n(a flood: the datapath recorded 12.5% of the denied packets at its last read; the counts of that read are scaled up, ≈)\n"),
            "{}",
            flooded.render(t(3700))
        );
    }

    #[test]
    fn since_keeps_the_recently_seen_and_top_bounds_the_rows() {
        let file = file();
        let report = Report::new(&file, 1, Some(Duration::from_secs(60)), t(3620));
        assert_eq!(report.sources, 1, "only the one seen at 3600");
        assert_eq!(report.top[0].source, "198.51.100.7");
        assert!(report.known_below_top.is_empty());
        let text = report.render(t(3620));
        assert!(
            text.starts_with(
                "1 distinct denied sources (seen in the last 1m), 1 of them known senders"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_json_names_each_field_and_the_known_reasons() {
        let file = file();
        let report = Report::new(&file, 200, None, t(3700));
        let json = serde_json::to_value(&report).unwrap();
        let row = json["top"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["source"] == "198.51.100.7")
            .expect("present")
            .clone();
        assert_eq!(row["packets"], 2);
        assert_eq!(row["estimated"], false);
        assert_eq!(row["port"], 8443);
        assert_eq!(row["known"][0]["why"], "refused_update");
        assert_eq!(row["known"][0]["provider"], "partner");
        assert_eq!(row["known"][0]["guard"], "shrink");
        assert!(
            row["what"]
                .as_str()
                .unwrap()
                .starts_with("in partner's update of")
        );
        assert_eq!(json["known_senders"], 2);
        assert!(json["known_below_top"].as_array().unwrap().is_empty());
    }
}
