//! The IPv6 fast table (`allowlist_common::fast::v6`): a multibit trie of 256-code
//! chunks with leaf pushing, a 16-bit root and 8-bit strides down to /64, computed
//! from a set of prefixes and written the way the program can read it at any moment.
//!
//! The table only ever repeats what the trie answers, as the IPv4 table does (see
//! `fast`). A /16's subtree is recomputed whole from the prefixes the trie holds, then
//! written into the table code by code, changing only what differs: a code that stays
//! a chunk pointer is followed and its chunk changed in place; a new subtree is built
//! in free chunks, bottom up, before the one store that publishes it; the chunks of a
//! subtree a code stops pointing at are freed after that store, and reused from the
//! next sync on (see `pool`). Every code changes in one store, so every address goes
//! from its old answer to its new one directly. What the table cannot hold is left to
//! the trie (`DEEPER`): the /64 of a longer prefix, and a subtree for which the pool
//! has no chunk.

use std::{
    collections::BTreeMap,
    net::Ipv6Addr,
    sync::atomic::{AtomicU16, Ordering},
};

use allowlist_common::{fast, maps as names};
use aya::maps::MapData;
use ipnet::{IpNet, Ipv6Net};

use super::{
    DatapathError,
    fast::{FastReport, Layers, merge},
    mapping::Region,
    pool::Pool,
};

const ROOT_ENTRIES: u32 = 1 << 16;
/// Length of the prefix a root entry stands for.
const ROOT_LEN: u8 = 16;
const STRIDE: u8 = 8;

/// The root entries (/16s) a set of prefixes touches, as sorted, disjoint, inclusive
/// ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Roots(Vec<(u32, u32)>);

impl Roots {
    pub(super) fn all() -> Self {
        Self(vec![(0, ROOT_ENTRIES - 1)])
    }

    /// The root entries the IPv6 prefixes among `nets` overlap.
    pub(super) fn of<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> Self {
        Self(merge(nets.into_iter().filter_map(|net| match net {
            IpNet::V6(n) => Some((root(n.network()), root(n.broadcast()))),
            IpNet::V4(_) => None,
        })))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn root(addr: Ipv6Addr) -> u32 {
    (u128::from(addr) >> 112) as u32
}

fn v6net(addr: u128, len: u8) -> IpNet {
    IpNet::V6(Ipv6Net::new(Ipv6Addr::from(addr), len).expect("length ≤ 128"))
}

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    }
}

/// A prefix and the code for its addresses.
#[derive(Clone, Copy, Debug)]
struct Prefix {
    net: u128,
    len: u8,
    code: u16,
}

/// What the table should hold for a region: one answer, or a chunk of 256
/// sub-regions.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Leaf(u16),
    Split(Vec<Node>),
}

/// The subtree of a region of length `len` whose addresses are otherwise `base`, from
/// the prefixes strictly inside it.
fn build(base: u16, len: u8, mut inside: Vec<Prefix>) -> Node {
    if inside.is_empty() {
        return Node::Leaf(base);
    }
    if len >= fast::v6::MAX_LEN {
        // Longer than the table resolves: the trie answers for the /64.
        return Node::Leaf(fast::DEEPER);
    }
    let child_len = len + STRIDE;
    let shift = 128 - u32::from(child_len);
    let index = |p: &Prefix| ((p.net >> shift) & 0xFF) as usize;
    // Shortest first, so that longer prefixes overwrite the entries they cover.
    inside.sort_unstable_by_key(|p| (p.len, p.net));
    let mut codes = [base; 256];
    let mut deeper: BTreeMap<usize, Vec<Prefix>> = BTreeMap::new();
    for p in inside {
        if p.len <= child_len {
            let lo = index(&p);
            codes[lo..lo + (1 << (child_len - p.len))].fill(p.code);
        } else {
            deeper.entry(index(&p)).or_default().push(p);
        }
    }
    let mut entries: Vec<Node> = codes.iter().map(|c| Node::Leaf(*c)).collect();
    for (i, group) in deeper {
        entries[i] = build(codes[i], child_len, group);
    }
    match &entries[0] {
        Node::Leaf(first) if entries.iter().all(|e| e == &Node::Leaf(*first)) => Node::Leaf(*first),
        _ => Node::Split(entries),
    }
}

/// The subtrees of root entries `lo..=hi` from `layers` (longest match wins; equal
/// prefixes: the first layer's rule), handed to `each` one root entry at a time.
fn subtrees(
    layers: &Layers<'_>,
    lo: u32,
    hi: u32,
    mut each: impl FnMut(u32, Node) -> Result<(), DatapathError>,
) -> Result<(), DatapathError> {
    let first = u128::from(lo) << 112;
    let last = (u128::from(hi) << 112) | !mask(ROOT_LEN);
    // Prefixes up to /16 by (length, network); longer ones by root entry.
    let mut short: BTreeMap<(u8, u128), u16> = BTreeMap::new();
    let mut long: BTreeMap<u32, BTreeMap<(u128, u8), u16>> = BTreeMap::new();
    for layer in layers {
        // Prefixes that cover the first entry start before it or at its start.
        for len in 0..=ROOT_LEN {
            let net = first & mask(len);
            if let Some(rule) = layer.get(&v6net(net, len)) {
                short.entry((len, net)).or_insert(fast::allow(*rule));
            }
        }
        for (net, rule) in layer.range(v6net(first, 0)..=v6net(last, 128)) {
            let IpNet::V6(n) = net else { continue };
            let (addr, len) = (u128::from(n.network()), n.prefix_len());
            if len <= ROOT_LEN {
                short.entry((len, addr)).or_insert(fast::allow(*rule));
            } else {
                long.entry((addr >> 112) as u32)
                    .or_default()
                    .entry((addr, len))
                    .or_insert(fast::allow(*rule));
            }
        }
    }
    let mut codes = vec![fast::DENY; (hi - lo + 1) as usize];
    for ((len, addr), code) in short {
        let a = ((addr >> 112) as u32).max(lo);
        let b = (((addr | !mask(len)) >> 112) as u32).min(hi);
        codes[(a - lo) as usize..=(b - lo) as usize].fill(code);
    }
    let mut long = long.into_iter().peekable();
    for entry in lo..=hi {
        let base = codes[(entry - lo) as usize];
        let node = match long.next_if(|(e, _)| *e == entry) {
            Some((_, inside)) => build(
                base,
                ROOT_LEN,
                inside
                    .into_iter()
                    .map(|((net, len), code)| Prefix { net, len, code })
                    .collect(),
            ),
            None => Node::Leaf(base),
        };
        each(entry, node)?;
    }
    Ok(())
}

/// The table's map, and which chunks of its pool are free (read from the table at the
/// first sync: the map may be a previous agent's).
pub(super) struct FastV6 {
    table: MapData,
    pool: Option<Pool>,
}

impl FastV6 {
    pub(super) fn new(table: MapData) -> Self {
        Self { table, pool: None }
    }

    /// A new sync starts: chunks freed by the previous ones may be reused.
    pub(super) fn recycle(&mut self) {
        if let Some(pool) = &mut self.pool {
            pool.recycle();
        }
    }

    /// Runs `f` with the map mapped for writing.
    pub(super) fn with_writer<T>(
        &mut self,
        f: impl FnOnce(&mut Writer<'_>) -> Result<T, DatapathError>,
    ) -> Result<T, DatapathError> {
        let region = Region::of_map(
            &self.table,
            fast::v6::CHUNKS * size_of::<fast::v6::Chunk>(),
            names::FAST_V6,
        );
        let cells = Cells(&region);
        let pool = match &mut self.pool {
            Some(pool) => pool,
            None => self.pool.insert(cells.scan()?),
        };
        f(&mut Writer { cells, pool })
    }
}

/// The pool's codes: the root's 2^16, then 256 per chunk.
#[derive(Clone, Copy)]
pub(super) struct Cells<'a>(&'a Region<'a>);

impl<'a> Cells<'a> {
    fn root(&self, entry: u32) -> Result<&'a AtomicU16, DatapathError> {
        self.0.u16(entry as usize)
    }

    /// The codes of chunk `chunk` (numbered from the first chunk after the root).
    fn chunk(&self, chunk: u32) -> Result<&'a [AtomicU16], DatapathError> {
        self.0.u16s(fast::v6::pool_index(chunk) as usize * 256, 256)
    }

    fn chunk_count(&self) -> u32 {
        (self.0.len() / 512 - fast::v6::ROOT_CHUNKS) as u32
    }

    /// The pool's state as the codes say (see `fast::Cells::scan`): a pointer outside
    /// the pool, to a chunk already reached, or below the /64 is replaced by `DEEPER`.
    fn scan(&self) -> Result<Pool, DatapathError> {
        let mut used = vec![false; self.chunk_count() as usize];
        let mut stack: Vec<(&AtomicU16, u8)> = Vec::new();
        for e in 0..ROOT_ENTRIES {
            stack.push((self.root(e)?, ROOT_LEN));
        }
        while let Some((cell, len)) = stack.pop() {
            let Some(chunk) = fast::chunk(cell.load(Ordering::Relaxed)) else {
                continue;
            };
            match used.get_mut(chunk as usize) {
                Some(u) if !*u && len < fast::v6::MAX_LEN => {
                    *u = true;
                    stack.extend(self.chunk(chunk)?.iter().map(|c| (c, len + STRIDE)));
                }
                _ => cell.store(fast::DEEPER, Ordering::Release),
            }
        }
        Ok(Pool::new(&used))
    }

    /// The answer for `addr`, read the way the program reads it.
    #[cfg(test)]
    fn lookup(&self, addr: u128) -> u16 {
        let bytes = addr.to_be_bytes();
        let mut code = self
            .root((addr >> 112) as u32)
            .unwrap()
            .load(Ordering::Acquire);
        for byte in &bytes[2..fast::v6::LEVELS + 1] {
            let Some(chunk) = fast::chunk(code) else {
                return code;
            };
            code = self.chunk(chunk).unwrap()[*byte as usize].load(Ordering::Acquire);
        }
        if fast::chunk(code).is_some() {
            fast::DEEPER
        } else {
            code
        }
    }
}

/// Writes codes into the mapped table.
pub(super) struct Writer<'a> {
    cells: Cells<'a>,
    pool: &'a mut Pool,
}

impl Writer<'_> {
    /// Makes the subtrees of `roots` what `layers` (the trie's content) says.
    pub(super) fn refresh(
        &mut self,
        layers: &Layers<'_>,
        roots: &Roots,
    ) -> Result<FastReport, DatapathError> {
        let mut report = FastReport::default();
        for &(lo, hi) in &roots.0 {
            subtrees(layers, lo, hi, |entry, node| {
                let cell = self.cells.root(entry)?;
                self.write(cell, node, &mut report)
            })?;
        }
        Ok(report)
    }

    /// Makes the whole table what `layers` says.
    pub(super) fn rebuild(&mut self, layers: &Layers<'_>) -> Result<FastReport, DatapathError> {
        self.refresh(layers, &Roots::all())
    }

    /// Chunks in use (or freed during this sync).
    pub(super) fn chunks_in_use(&self) -> Result<usize, DatapathError> {
        Ok(self.pool.in_use())
    }

    /// Makes `cell` (a code in a published chunk, or the root) say `node`.
    fn write(
        &mut self,
        cell: &AtomicU16,
        node: Node,
        report: &mut FastReport,
    ) -> Result<(), DatapathError> {
        let old = cell.load(Ordering::Relaxed);
        match node {
            Node::Split(entries) => {
                if let Some(chunk) = fast::chunk(old) {
                    // Still pointed at: changed in place, code by code.
                    let codes = self.cells.chunk(chunk)?;
                    for (cell, entry) in codes.iter().zip(entries) {
                        self.write(cell, entry, report)?;
                    }
                    return Ok(());
                }
                match self.fill(entries, report)? {
                    Some(chunk) => {
                        cell.store(fast::descend(chunk), Ordering::Release);
                        report.codes_written += 1;
                    }
                    None => {
                        report.left_to_trie += 1;
                        if old != fast::DEEPER {
                            cell.store(fast::DEEPER, Ordering::Release);
                            report.codes_written += 1;
                        }
                    }
                }
            }
            Node::Leaf(code) => {
                if old != code {
                    cell.store(code, Ordering::Release);
                    report.codes_written += 1;
                }
                if let Some(chunk) = fast::chunk(old) {
                    // Nothing points at the old subtree any more.
                    self.release_subtree(chunk, report)?;
                }
            }
        }
        Ok(())
    }

    /// Builds `entries` in a free chunk (and their subtrees in others), nothing
    /// pointing at any of them yet; `None` when the pool is full (sub-regions that
    /// find no chunk are left to the trie inside a chunk that is filled).
    fn fill(
        &mut self,
        entries: Vec<Node>,
        report: &mut FastReport,
    ) -> Result<Option<u32>, DatapathError> {
        let Some(chunk) = self.pool.take() else {
            return Ok(None);
        };
        report.chunks_filled += 1;
        let codes = self.cells.chunk(chunk)?;
        for (cell, entry) in codes.iter().zip(entries) {
            let code = match entry {
                Node::Leaf(code) => code,
                Node::Split(sub) => match self.fill(sub, report)? {
                    Some(child) => fast::descend(child),
                    None => {
                        report.left_to_trie += 1;
                        fast::DEEPER
                    }
                },
            };
            cell.store(code, Ordering::Relaxed);
        }
        Ok(Some(chunk))
    }

    fn release_subtree(
        &mut self,
        chunk: u32,
        report: &mut FastReport,
    ) -> Result<(), DatapathError> {
        let mut stack = vec![chunk];
        while let Some(chunk) = stack.pop() {
            self.pool.release_later(chunk);
            report.chunks_freed += 1;
            stack.extend(
                self.cells
                    .chunk(chunk)?
                    .iter()
                    .filter_map(|c| fast::chunk(c.load(Ordering::Relaxed))),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::datapath::fast::tests::{Rng, changes, set};

    /// What the longest match says for `addr`, the slow obvious way.
    fn longest(layers: &Layers<'_>, addr: u128) -> u16 {
        for len in (0..=128u8).rev() {
            for layer in layers {
                if let Some(rule) = layer.get(&v6net(addr & mask(len), len)) {
                    return fast::allow(*rule);
                }
            }
        }
        fast::DENY
    }

    fn addr(s: &str) -> u128 {
        u128::from(s.parse::<Ipv6Addr>().unwrap())
    }

    /// An in-memory pool of `chunks` chunks besides the root, written by the same code
    /// as the map.
    struct Table {
        codes: Vec<AtomicU64>,
        pool: Pool,
    }

    impl Table {
        /// A zeroed table (all `DEEPER`), rebuilt for an empty set as `sync::resync`
        /// does.
        fn new(chunks: usize) -> Self {
            let mut table = Self {
                codes: (0..(fast::v6::ROOT_CHUNKS + chunks) * 64)
                    .map(|_| AtomicU64::new(0))
                    .collect(),
                pool: Pool::new(&vec![false; chunks]),
            };
            table.write(|w| w.rebuild(&[&BTreeMap::new()]).map(drop));
            table
        }

        fn write(&mut self, f: impl FnOnce(&mut Writer<'_>) -> Result<(), DatapathError>) {
            let region = Region::of_memory(&self.codes);
            f(&mut Writer {
                cells: Cells(&region),
                pool: &mut self.pool,
            })
            .unwrap();
        }

        fn with<T>(&self, f: impl FnOnce(Cells<'_>) -> T) -> T {
            f(Cells(&Region::of_memory(&self.codes)))
        }

        /// The answers for `addrs`, read the way the program reads them.
        fn lookup(&self, addrs: &[u128]) -> Vec<u16> {
            self.with(|c| addrs.iter().map(|a| c.lookup(*a)).collect())
        }

        /// One sync, in `sync::apply`'s order.
        fn sync(&mut self, current: &BTreeMap<IpNet, u32>, desired: &BTreeMap<IpNet, u32>) {
            let (upserts, removals) = changes(current, desired);
            self.pool.recycle();
            self.write(|w| {
                w.refresh(&[desired, current], &Roots::of(&upserts))?;
                w.refresh(&[desired], &Roots::of(&removals))?;
                Ok(())
            });
        }

        /// Chunks reachable from the root, each reached once.
        fn reachable(&self) -> usize {
            self.with(|cells| {
                let mut seen = std::collections::BTreeSet::new();
                let mut stack: Vec<u32> = (0..ROOT_ENTRIES)
                    .filter_map(|e| fast::chunk(cells.root(e).unwrap().load(Ordering::Relaxed)))
                    .collect();
                while let Some(chunk) = stack.pop() {
                    assert!(seen.insert(chunk), "chunk {chunk} reached twice");
                    stack.extend(
                        cells
                            .chunk(chunk)
                            .unwrap()
                            .iter()
                            .filter_map(|c| fast::chunk(c.load(Ordering::Relaxed))),
                    );
                }
                seen.len()
            })
        }
    }

    #[test]
    fn roots_cover_short_and_long_prefixes() {
        let nets: Vec<IpNet> = ["2001:db8::/32", "2400::/6", "192.0.2.0/24"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(Roots::of(&nets).0, [(0x2001, 0x2001), (0x2400, 0x27ff)]);
        assert!(Roots::of(&nets[2..]).is_empty());
    }

    #[test]
    fn lookups_follow_the_longest_match() {
        let s = set(&[
            ("2001:db8::/32", 1),
            ("2001:db8:1::/48", 2),
            ("2001:db8:1:2::/64", 3),
            ("2001:db8:1:3:4::/80", 4),
            ("2001:db8:ff00::/40", 5),
            ("2001:db9::/33", 6),
            ("2400::/12", 7),
            ("2400:10::/28", 8),
            ("2a00::/20", fast::MAX_RULE + 1),
        ]);
        let mut table = Table::new(64);
        table.sync(&BTreeMap::new(), &s);
        for (a, code) in [
            ("2001:db8::1", fast::allow(1)),
            ("2001:db8:1::1", fast::allow(2)),
            ("2001:db8:1:2:ffff::1", fast::allow(3)),
            ("2001:db8:1:1::1", fast::allow(2)),
            // The /64 holding a longer prefix is the trie's.
            ("2001:db8:1:3:4::1", fast::DEEPER),
            ("2001:db8:1:3:5::1", fast::DEEPER),
            ("2001:db8:1:4::1", fast::allow(2)),
            ("2001:db8:ff12::1", fast::allow(5)),
            ("2001:db9::1", fast::allow(6)),
            ("2001:db9:8000::1", fast::DENY),
            ("2001:dba::1", fast::DENY),
            ("2400:f::1", fast::allow(7)),
            ("2400:1f::1", fast::allow(8)),
            ("2410::1", fast::DENY),
            ("2a00:1::1", fast::DEEPER),
            ("::1", fast::DENY),
        ] {
            assert_eq!(table.lookup(&[addr(a)]), [code], "{a}");
        }
    }

    /// Random prefixes /20 to /72 under a few /16s, so that they nest and share chunks.
    fn random_set(rng: &mut Rng, n: usize) -> BTreeMap<IpNet, u32> {
        let mut s = BTreeMap::new();
        while s.len() < n {
            let len = 20 + rng.below(53) as u8;
            let a = random_addr(rng);
            s.insert(v6net(a & mask(len), len), rng.below(6) as u32);
        }
        s
    }

    /// An address in one of four /16s, with its bits below /72 random but few values
    /// between /16 and /72 so that prefixes and addresses meet.
    fn random_addr(rng: &mut Rng) -> u128 {
        let top = [0x2001u128, 0x2400, 0x2a00, 0x2a01][rng.below(4) as usize] << 112;
        let mut mid = 0u128;
        for byte in 0..7 {
            mid |= u128::from(rng.below(3) as u8) << (104 - 8 * byte);
        }
        top | mid | u128::from(rng.next())
    }

    #[test]
    fn the_table_matches_a_brute_force_longest_match_through_syncs() {
        let mut rng = Rng::new(0x6666);
        let mut table = Table::new(4096);
        let mut current = BTreeMap::new();
        for _ in 0..8 {
            let desired = random_set(&mut rng, 300);
            table.sync(&current, &desired);
            let probes: Vec<u128> = (0..20_000).map(|_| random_addr(&mut rng)).collect();
            for (a, got) in probes.iter().zip(table.lookup(&probes)) {
                // Only what the table cannot resolve (a /64 holding a longer prefix)
                // goes to the trie.
                if got == fast::DEEPER {
                    assert!(
                        holds_longer_than_64(&desired, *a),
                        "{} left to the trie",
                        Ipv6Addr::from(*a)
                    );
                } else {
                    let want = longest(&[&desired], *a);
                    assert_eq!(got, want, "{}", Ipv6Addr::from(*a));
                }
            }
            assert!(table.reachable() <= table.pool.in_use());
            table.pool.recycle();
            assert_eq!(table.reachable(), table.pool.in_use());
            current = desired;
        }
    }

    /// Whether a prefix longer than /64 lies in the /64 of `a`.
    fn holds_longer_than_64(set: &BTreeMap<IpNet, u32>, a: u128) -> bool {
        let net = a & mask(64);
        set.range(v6net(net, 0)..=v6net(net | !mask(64), 128))
            .any(|(n, _)| n.prefix_len() > 64)
    }

    #[test]
    fn a_full_pool_leaves_subtrees_to_the_trie() {
        let mut rng = Rng::new(0x7777);
        let mut table = Table::new(16);
        let mut current = BTreeMap::new();
        for _ in 0..4 {
            let desired = random_set(&mut rng, 300);
            table.sync(&current, &desired);
            let mut deeper = 0;
            let probes: Vec<u128> = (0..20_000).map(|_| random_addr(&mut rng)).collect();
            for (a, got) in probes.iter().zip(table.lookup(&probes)) {
                match got {
                    fast::DEEPER => deeper += 1,
                    code => assert_eq!(code, longest(&[&desired], *a), "{}", Ipv6Addr::from(*a)),
                }
            }
            assert!(deeper > 0, "more chunks needed than the pool holds");
            table.pool.recycle();
            assert_eq!(table.reachable(), table.pool.in_use());
            current = desired;
        }
    }

    #[test]
    fn the_scan_drops_bad_pointers() {
        let table = Table::new(4);
        table.with(|cells| {
            let root = |e| cells.root(e).unwrap();
            let chunk = |n| cells.chunk(n).unwrap();
            root(0x2001).store(fast::descend(0), Ordering::Relaxed);
            root(0x2002).store(fast::descend(0), Ordering::Relaxed);
            root(0x2003).store(fast::descend(7), Ordering::Relaxed);
            chunk(0)[1].store(fast::descend(1), Ordering::Relaxed);
            // A chain back to the first chunk.
            let mut at = chunk(1);
            for next in [2, 3, 0] {
                at[0].store(fast::descend(next), Ordering::Relaxed);
                at = chunk(next);
            }
            let pool = cells.scan().unwrap();
            // One of the two roots sharing chunk 0 keeps it.
            let roots = [0x2001, 0x2002].map(|e| root(e).load(Ordering::Relaxed));
            assert!(roots.contains(&fast::descend(0)) && roots.contains(&fast::DEEPER));
            assert_eq!(root(0x2003).load(Ordering::Relaxed), fast::DEEPER);
            // 0 → 1 → 2 → 3; chunk 3's pointer back to 0 goes.
            assert_eq!(pool.in_use(), 4);
            assert_eq!(chunk(3)[0].load(Ordering::Relaxed), fast::DEEPER);
        });
    }
}
