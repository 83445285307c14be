//! Random allowlists and the source addresses judged against them. Seeded, so that
//! two runs measure the same lists.

use std::{
    collections::{BTreeMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// How many providers (rule ids) the random prefixes are spread over.
pub(crate) const RULES: u32 = 8;

pub(crate) fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` distinct IPv4 prefixes of random lengths in `lengths`, at random addresses
/// (nested and overlapping prefixes included, as in merged real lists), each with a
/// random rule id below [`RULES`].
pub(crate) fn v4_prefixes(
    rng: &mut StdRng,
    n: usize,
    lengths: std::ops::RangeInclusive<u8>,
) -> BTreeMap<IpNet, u32> {
    let mut out = BTreeMap::new();
    while out.len() < n {
        let len = rng.random_range(lengths.clone());
        let net = Ipv4Net::new(Ipv4Addr::from(rng.random::<u32>()), len)
            .expect("length ≤ 32")
            .trunc();
        out.insert(IpNet::V4(net), rng.random_range(0..RULES));
    }
    out
}

/// `n` IPv4 prefixes as the agent holds them after merging a provider's list: no
/// prefix inside another, no two that merge into a shorter one (so that the agent's
/// maps hold exactly `n`).
pub(crate) fn v4_aggregated(
    rng: &mut StdRng,
    n: usize,
    lengths: std::ops::RangeInclusive<u8>,
) -> BTreeMap<IpNet, u32> {
    let mut nets: Vec<IpNet> = Vec::new();
    while nets.len() < n {
        nets.extend(v4_prefixes(rng, n - nets.len(), lengths.clone()).into_keys());
        nets = IpNet::aggregate(&nets);
    }
    nets.truncate(n);
    nets.into_iter()
        .map(|net| (net, rng.random_range(0..RULES)))
        .collect()
}

/// `n` distinct IPv6 prefixes of random lengths in `lengths` inside 2000::/3.
pub(crate) fn v6_prefixes(
    rng: &mut StdRng,
    n: usize,
    lengths: std::ops::RangeInclusive<u8>,
) -> BTreeMap<IpNet, u32> {
    let mut out = BTreeMap::new();
    while out.len() < n {
        let len = rng.random_range(lengths.clone());
        let addr = global_unicast(rng);
        let net = Ipv6Net::new(addr, len).expect("length ≤ 128").trunc();
        out.insert(IpNet::V6(net), rng.random_range(0..RULES));
    }
    out
}

fn global_unicast(rng: &mut StdRng) -> Ipv6Addr {
    let bits = (rng.random::<u128>() >> 3) | (1u128 << 125);
    Ipv6Addr::from(bits)
}

/// Longest-prefix membership, computed the slow obvious way: one hash set per length.
pub(crate) struct Membership {
    v4: Vec<HashSet<u32>>,
    v6: Vec<HashSet<u128>>,
}

impl Membership {
    pub(crate) fn new(list: &BTreeMap<IpNet, u32>) -> Self {
        let mut v4 = vec![HashSet::new(); 33];
        let mut v6 = vec![HashSet::new(); 129];
        for net in list.keys() {
            match net {
                IpNet::V4(n) => {
                    v4[n.prefix_len() as usize].insert(u32::from(n.network()));
                }
                IpNet::V6(n) => {
                    v6[n.prefix_len() as usize].insert(u128::from(n.network()));
                }
            }
        }
        Self { v4, v6 }
    }

    pub(crate) fn contains_v4(&self, addr: u32) -> bool {
        (0..=32usize).any(|len| {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            self.v4[len].contains(&(addr & mask))
        })
    }

    pub(crate) fn contains_v6(&self, addr: u128) -> bool {
        (0..=128usize).any(|len| {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            self.v6[len].contains(&(addr & mask))
        })
    }
}

/// `n` addresses inside prefixes of `list` (the family's prefixes picked uniformly,
/// the host inside each uniformly).
pub(crate) fn allowed_v4(rng: &mut StdRng, list: &BTreeMap<IpNet, u32>, n: usize) -> Vec<Ipv4Addr> {
    let nets: Vec<Ipv4Net> = list
        .keys()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(*n),
            IpNet::V6(_) => None,
        })
        .collect();
    (0..n)
        .map(|_| {
            let net = nets[rng.random_range(0..nets.len())];
            let host_bits = 32 - u32::from(net.prefix_len());
            let host = if host_bits == 0 {
                0
            } else {
                rng.random::<u32>() >> (32 - host_bits)
            };
            Ipv4Addr::from(u32::from(net.network()) | host)
        })
        .collect()
}

pub(crate) fn allowed_v6(rng: &mut StdRng, list: &BTreeMap<IpNet, u32>, n: usize) -> Vec<Ipv6Addr> {
    let nets: Vec<Ipv6Net> = list
        .keys()
        .filter_map(|n| match n {
            IpNet::V6(n) => Some(*n),
            IpNet::V4(_) => None,
        })
        .collect();
    (0..n)
        .map(|_| {
            let net = nets[rng.random_range(0..nets.len())];
            let host_bits = 128 - u32::from(net.prefix_len());
            let host = if host_bits == 0 {
                0
            } else {
                rng.random::<u128>() >> (128 - host_bits)
            };
            Ipv6Addr::from(u128::from(net.network()) | host)
        })
        .collect()
}

/// `n` allowed addresses whose /24 holds a prefix longer than /24 (the fast table
/// splits it into a group), and `n` whose /24 does not.
pub(crate) fn allowed_v4_by_block(
    rng: &mut StdRng,
    list: &BTreeMap<IpNet, u32>,
    n: usize,
) -> (Vec<Ipv4Addr>, Vec<Ipv4Addr>) {
    let split: HashSet<u32> = list
        .keys()
        .filter_map(|net| match net {
            IpNet::V4(n) if n.prefix_len() > 24 => Some(u32::from(n.network()) >> 8),
            _ => None,
        })
        .collect();
    let (mut inside, mut outside) = (Vec::with_capacity(n), Vec::with_capacity(n));
    while inside.len() < n || outside.len() < n {
        for addr in allowed_v4(rng, list, n) {
            let side = if split.contains(&(u32::from(addr) >> 8)) {
                &mut inside
            } else {
                &mut outside
            };
            if side.len() < n {
                side.push(addr);
            }
        }
    }
    (inside, outside)
}

/// `n` allowed IPv6 addresses whose longest match in `list` is at most `len` long,
/// and `n` whose longest match is longer.
pub(crate) fn allowed_v6_by_length(
    rng: &mut StdRng,
    list: &BTreeMap<IpNet, u32>,
    n: usize,
    len: u8,
) -> (Vec<Ipv6Addr>, Vec<Ipv6Addr>) {
    let longest = |addr: Ipv6Addr| {
        (0..=128u8)
            .rev()
            .find(|l| {
                let net = Ipv6Net::new(addr, *l).expect("length ≤ 128").trunc();
                list.contains_key(&IpNet::V6(net))
            })
            .expect("an allowed address")
    };
    let (mut short, mut long) = (Vec::with_capacity(n), Vec::with_capacity(n));
    while short.len() < n || long.len() < n {
        for addr in allowed_v6(rng, list, n) {
            let side = if longest(addr) <= len {
                &mut short
            } else {
                &mut long
            };
            if side.len() < n {
                side.push(addr);
            }
        }
    }
    (short, long)
}

/// `n` random addresses that no prefix of `list` covers.
pub(crate) fn denied_v4(rng: &mut StdRng, members: &Membership, n: usize) -> Vec<Ipv4Addr> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let addr = rng.random::<u32>();
        if !members.contains_v4(addr) {
            out.push(Ipv4Addr::from(addr));
        }
    }
    out
}

pub(crate) fn denied_v6(rng: &mut StdRng, members: &Membership, n: usize) -> Vec<Ipv6Addr> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let addr = global_unicast(rng);
        if !members.contains_v6(u128::from(addr)) {
            out.push(addr);
        }
    }
    out
}

/// `n` addresses no prefix of `members` covers, each in the /24 of a random prefix of
/// `list` (the /24 itself for shorter ones): denied sources next to listed ones, which
/// the fast table follows below its root.
pub(crate) fn denied_v6_near(
    rng: &mut StdRng,
    members: &Membership,
    list: &BTreeMap<IpNet, u32>,
    n: usize,
) -> Vec<Ipv6Addr> {
    let nets: Vec<u128> = list
        .keys()
        .filter_map(|n| match n {
            IpNet::V6(n) => Some(u128::from(n.network()) & !(u128::MAX >> 24)),
            IpNet::V4(_) => None,
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let addr = nets[rng.random_range(0..nets.len())] | (rng.random::<u128>() >> 24);
        if !members.contains_v6(addr) {
            out.push(Ipv6Addr::from(addr));
        }
    }
    out
}

/// The text of a `format = "text"` source: one prefix a line.
pub(crate) fn text_document(list: &BTreeMap<IpNet, u32>) -> String {
    let mut out = String::with_capacity(list.len() * 20);
    for net in list.keys() {
        out.push_str(&net.to_string());
        out.push('\n');
    }
    out
}

/// A document shaped like AWS's ip-ranges.json (records with `ip_prefix` or
/// `ipv6_prefix`, `region`, `service`, `network_border_group`, pretty-printed with
/// four spaces as AWS serves it) of at least `bytes` bytes.
pub(crate) fn aws_document(rng: &mut StdRng, bytes: usize) -> Vec<u8> {
    const REGIONS: [&str; 8] = [
        "us-east-1",
        "us-west-2",
        "eu-west-1",
        "eu-central-1",
        "ap-southeast-1",
        "ap-northeast-1",
        "sa-east-1",
        "GLOBAL",
    ];
    const SERVICES: [&str; 6] = [
        "AMAZON",
        "EC2",
        "S3",
        "CLOUDFRONT",
        "ROUTE53_HEALTHCHECKS",
        "API_GATEWAY",
    ];
    let record = |rng: &mut StdRng, field: &str, prefix: String| {
        let region = REGIONS[rng.random_range(0..REGIONS.len())];
        serde_json::json!({
            field: prefix,
            "region": region,
            "service": SERVICES[rng.random_range(0..SERVICES.len())],
            "network_border_group": region,
        })
    };
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut estimate = 0;
    while estimate < bytes {
        // AWS publishes about three IPv4 records for every IPv6 one.
        if rng.random_range(0..4) < 3 {
            let len = rng.random_range(16..=28);
            let net = Ipv4Net::new(Ipv4Addr::from(rng.random::<u32>()), len)
                .expect("valid length")
                .trunc();
            v4.push(record(rng, "ip_prefix", net.to_string()));
        } else {
            let len = rng.random_range(32..=64);
            let net = Ipv6Net::new(global_unicast(rng), len)
                .expect("valid length")
                .trunc();
            v6.push(record(rng, "ipv6_prefix", net.to_string()));
        }
        estimate += 190;
    }
    let document = serde_json::json!({
        "syncToken": "1763874000",
        "createDate": "2026-11-23-05-00-00",
        "prefixes": v4,
        "ipv6_prefixes": v6,
    });
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(&document, &mut ser).expect("serialise JSON");
    out
}

/// The IPv6 prefixes of AWS's published `ip-ranges.json` (`ipv6_prefixes[].ipv6_prefix`,
/// read by the agent's own JSON source parser, deduplicated), each with a random rule
/// id below [`RULES`], and the same list filled up to `n` prefixes with random /32–/64
/// ones (as [`v6_prefixes`] makes them).
pub(crate) fn aws_v6_filled(
    rng: &mut StdRng,
    document: &std::path::Path,
    n: usize,
) -> anyhow::Result<(BTreeMap<IpNet, u32>, BTreeMap<IpNet, u32>)> {
    use allowlist_user::{Format, Selector, parse_document};
    use anyhow::Context as _;

    let body =
        std::fs::read(document).with_context(|| format!("reading {}", document.display()))?;
    let format = Format::Json(Selector {
        items: vec!["ipv6_prefixes".into()],
        cidr: vec!["ipv6_prefix".into()],
        filters: Vec::new(),
        serial: None,
    });
    let parsed = parse_document(&format, &body, "aws-ip-ranges")
        .with_context(|| format!("{}: not AWS's ip-ranges.json", document.display()))?;
    let mut aws = BTreeMap::new();
    for entry in parsed.entries {
        let net: Ipv6Net = entry
            .parse()
            .with_context(|| format!("{}: {entry:?} is not an IPv6 prefix", document.display()))?;
        aws.insert(IpNet::V6(net.trunc()), rng.random_range(0..RULES));
    }
    if aws.is_empty() {
        anyhow::bail!("{}: no ipv6_prefixes", document.display());
    }
    let mut filled = aws.clone();
    while filled.len() < n {
        let more = v6_prefixes(rng, n - filled.len(), 32..=64);
        for (net, rule) in more {
            filled.entry(net).or_insert(rule);
        }
    }
    Ok((aws, filled))
}
