//! The IPv4 fast table (`allowlist_common::fast::v4`): computing each /24's code
//! from a set of prefixes, and writing the codes the way the program can read them at
//! any moment.
//!
//! The table only ever repeats what the trie answers. A block's code is recomputed
//! from the prefixes the trie holds at that moment (given as layers of maps, see
//! [`Layers`]) and written in one store, so every address goes from its old answer to
//! its new one without an answer in between. A /24 that longer prefixes split points
//! at a chunk of the pool (`FAST_V4_CHUNKS`): a new chunk is filled before the code
//! that points at it is written; a chunk still pointed at is changed in place, one
//! byte per address; a chunk the code stops pointing at is freed after the code is
//! written, and handed out again from the next sync on (see `pool`). When the pool
//! is full the /24 is left to the trie (`DEEPER`).
//!
//! Both maps are written through shared memory mappings (see `mapping`), one store
//! per code.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::atomic::{AtomicU8, AtomicU16, Ordering},
};

use allowlist_common::{fast, maps as names};
use aya::maps::MapData;
use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;

use super::{
    DatapathError,
    mapping::{Region, WINDOW},
    pool::Pool,
};

/// Blocks per chunk of computation: the codes are computed a /8 at a time.
const CHUNK_BITS: u32 = 16;
const CHUNK_BLOCKS: usize = 1 << CHUNK_BITS;
const _: () = assert!(CHUNK_BLOCKS * 2 == WINDOW, "a chunk of codes is one window");
const LAST_BLOCK: u32 = (fast::v4::BLOCKS - 1) as u32;

/// What a fast-table update wrote (both tables).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FastReport {
    /// Codes changed, in the tables and in chunks (memory stores, not syscalls).
    pub codes_written: usize,
    /// Chunks taken from a pool and filled.
    pub chunks_filled: usize,
    /// Chunks no code points at any more (free from the next sync on).
    pub chunks_freed: usize,
    /// /24s or IPv6 subtrees left to the trie because their pool was full.
    pub left_to_trie: usize,
}

impl std::ops::AddAssign for FastReport {
    fn add_assign(&mut self, other: Self) {
        self.codes_written += other.codes_written;
        self.chunks_filled += other.chunks_filled;
        self.chunks_freed += other.chunks_freed;
        self.left_to_trie += other.left_to_trie;
    }
}

/// The prefixes the trie holds, as maps of prefix → rule id: where several maps list
/// a prefix, the first one's rule is the trie's (during a sync the trie holds the
/// union of the old and the new set, with the new rules: `[desired, current]`).
pub(super) type Layers<'a> = [&'a BTreeMap<IpNet, u32>];

/// The blocks a set of prefixes touches, as sorted, disjoint, inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Blocks(Vec<(u32, u32)>);

impl Blocks {
    /// Every block.
    pub(super) fn all() -> Self {
        Self(vec![(0, LAST_BLOCK)])
    }

    /// The blocks the IPv4 prefixes among `nets` overlap.
    pub(super) fn of<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> Self {
        Self(merge(nets.into_iter().filter_map(|net| match net {
            IpNet::V4(n) => Some(block_range(n)),
            IpNet::V6(_) => None,
        })))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn ranges(&self) -> &[(u32, u32)] {
        &self.0
    }
}

/// Sorted, disjoint inclusive ranges covering `ranges`.
pub(super) fn merge(ranges: impl Iterator<Item = (u32, u32)>) -> Vec<(u32, u32)> {
    let mut ranges: Vec<(u32, u32)> = ranges.collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

fn block_range(net: &Ipv4Net) -> (u32, u32) {
    let first = u32::from(net.network());
    let last = u32::from(net.broadcast());
    (fast::v4::block(first), fast::v4::block(last))
}

/// The codes of one chunk of blocks, and the byte codes of its split blocks.
struct Chunk {
    index: u32,
    codes: Vec<u16>,
    groups: BTreeMap<u32, fast::v4::Chunk>,
}

fn v4net(addr: u32, len: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr), len).expect("length ≤ 32"))
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

/// Computes the codes of chunk `index` from `layers` (longest match wins; equal
/// prefixes: the first layer's rule).
fn chunk_codes(layers: &Layers<'_>, index: u32) -> Chunk {
    let first_block = index << CHUNK_BITS;
    let first_addr = first_block << 8;
    let last_addr = first_addr | 0x00FF_FFFF;
    // Prefixes up to /24 by (length, network), shortest first; longer ones by
    // (block, length, network).
    let mut short: BTreeMap<(u8, u32), u32> = BTreeMap::new();
    let mut long: BTreeMap<(u32, u8, u32), u32> = BTreeMap::new();
    for layer in layers {
        // Prefixes that cover the whole chunk start before it or at its start.
        for len in 0..=(32 - CHUNK_BITS as u8 - 8) {
            let net = first_addr & mask(len);
            if let Some(rule) = layer.get(&v4net(net, len)) {
                short.entry((len, net)).or_insert(*rule);
            }
        }
        for (net, rule) in layer.range(v4net(first_addr, 0)..=v4net(last_addr, 32)) {
            let IpNet::V4(n) = net else { continue };
            let (addr, len) = (u32::from(n.network()), n.prefix_len());
            if len <= 24 {
                short.entry((len, addr)).or_insert(*rule);
            } else {
                long.entry((fast::v4::block(addr), len, addr))
                    .or_insert(*rule);
            }
        }
    }
    let mut codes = vec![fast::DENY; CHUNK_BLOCKS];
    for ((len, addr), rule) in short {
        let (lo, hi) = block_range(&Ipv4Net::new(Ipv4Addr::from(addr), len).expect("≤ 32"));
        let lo = lo.max(first_block) - first_block;
        let hi = hi.min(first_block + CHUNK_BLOCKS as u32 - 1) - first_block;
        codes[lo as usize..=hi as usize].fill(fast::allow(rule));
    }
    let mut groups = BTreeMap::new();
    let mut long = long.into_iter().peekable();
    while let Some(&((block, _, _), _)) = long.peek() {
        let slot = (block - first_block) as usize;
        let mut group = [codes[slot]; 256];
        while let Some(((_, len, addr), rule)) = long.next_if(|((b, _, _), _)| *b == block) {
            let lo = (addr & 0xFF) as usize;
            let hi = lo + (1usize << (32 - len)) - 1;
            group[lo..=hi].fill(fast::allow(rule));
        }
        if group.iter().all(|c| *c == group[0]) {
            codes[slot] = group[0];
        } else {
            groups.insert(block, group.map(fast::v4::byte));
        }
    }
    Chunk {
        index,
        codes,
        groups,
    }
}

/// The fast table's two maps, and which chunks of the pool are free (read from the
/// table at the first sync: the maps may be a previous agent's).
pub(super) struct FastV4 {
    table: MapData,
    chunks: MapData,
    pool: Option<Pool>,
}

impl FastV4 {
    pub(super) fn new(table: MapData, chunks: MapData) -> Self {
        Self {
            table,
            chunks,
            pool: None,
        }
    }

    /// A new sync starts: chunks freed by the previous ones may be reused.
    pub(super) fn recycle(&mut self) {
        if let Some(pool) = &mut self.pool {
            pool.recycle();
        }
    }

    /// Runs `f` with the maps mapped for writing.
    pub(super) fn with_writer<T>(
        &mut self,
        f: impl FnOnce(&mut Writer<'_>) -> Result<T, DatapathError>,
    ) -> Result<T, DatapathError> {
        let codes = Region::of_map(&self.table, fast::v4::BLOCKS * 2, names::FAST_V4);
        let bytes = Region::of_map(
            &self.chunks,
            fast::v4::CHUNKS * size_of::<fast::v4::Chunk>(),
            names::FAST_V4_CHUNKS,
        );
        let cells = Cells {
            codes: &codes,
            bytes: &bytes,
        };
        let pool = match &mut self.pool {
            Some(pool) => pool,
            None => self.pool.insert(cells.scan()?),
        };
        f(&mut Writer { cells, pool })
    }
}

/// The table's codes and the pool's chunks.
#[derive(Clone, Copy)]
pub(super) struct Cells<'a> {
    codes: &'a Region<'a>,
    bytes: &'a Region<'a>,
}

impl<'a> Cells<'a> {
    #[cfg(test)]
    fn code(&self, block: u32) -> Result<&'a AtomicU16, DatapathError> {
        self.codes.u16(block as usize)
    }

    fn chunk(&self, chunk: u32) -> Result<&'a [AtomicU8], DatapathError> {
        self.bytes.u8s(chunk as usize * 256, 256)
    }

    fn chunk_count(&self) -> u32 {
        (self.bytes.len() / 256) as u32
    }

    /// The pool's state as the codes say, for maps written by another agent (or a
    /// fresh, zeroed table): a code pointing outside the pool, or at a chunk another
    /// code already points at, is replaced by `DEEPER` (the trie answers).
    fn scan(&self) -> Result<Pool, DatapathError> {
        let mut used = vec![false; self.chunk_count() as usize];
        let per_window = WINDOW / 2;
        for first in (0..fast::v4::BLOCKS).step_by(per_window) {
            for cell in self.codes.u16s(first, per_window)? {
                if let Some(chunk) = fast::chunk(cell.load(Ordering::Relaxed)) {
                    match used.get_mut(chunk as usize) {
                        Some(u) if !*u => *u = true,
                        _ => cell.store(fast::DEEPER, Ordering::Release),
                    }
                }
            }
        }
        Ok(Pool::new(&used))
    }

    /// The answer for `addr`, read the way the program reads it.
    #[cfg(test)]
    fn lookup(&self, addr: u32) -> u16 {
        let block = fast::v4::block(addr);
        let code = self.code(block).unwrap().load(Ordering::Acquire);
        match fast::chunk(code) {
            Some(chunk) => u16::from(
                self.chunk(chunk).unwrap()[(addr & 0xFF) as usize].load(Ordering::Relaxed),
            ),
            None => code,
        }
    }
}

/// Writes codes into the mapped table.
pub(super) struct Writer<'a> {
    cells: Cells<'a>,
    pool: &'a mut Pool,
}

impl Writer<'_> {
    /// Makes the codes of `blocks` what `layers` (the trie's content) says.
    pub(super) fn refresh(
        &mut self,
        layers: &Layers<'_>,
        blocks: &Blocks,
    ) -> Result<FastReport, DatapathError> {
        let mut report = FastReport::default();
        let mut chunk: Option<Chunk> = None;
        for &(lo, hi) in blocks.ranges() {
            let mut block = lo;
            loop {
                let index = block >> CHUNK_BITS;
                if chunk.as_ref().is_none_or(|c| c.index != index) {
                    chunk = Some(chunk_codes(layers, index));
                }
                let c = chunk.as_ref().expect("computed above");
                let end = hi.min(((index + 1) << CHUNK_BITS) - 1);
                // A chunk of computation's codes are one mapping window.
                let first = index << CHUNK_BITS;
                let cells = self.cells.codes.u16s(first as usize, CHUNK_BLOCKS)?;
                for b in block..=end {
                    let i = (b - first) as usize;
                    self.write(&cells[i], b, c.codes[i], c.groups.get(&b), &mut report)?;
                }
                if end == hi {
                    break;
                }
                block = end + 1;
            }
        }
        Ok(report)
    }

    /// Makes every code what `layers` says.
    pub(super) fn rebuild(&mut self, layers: &Layers<'_>) -> Result<FastReport, DatapathError> {
        self.refresh(layers, &Blocks::all())
    }

    /// Chunks in use (or freed during this sync).
    pub(super) fn chunks_in_use(&self) -> Result<usize, DatapathError> {
        Ok(self.pool.in_use())
    }

    /// Makes `cell`, the code of `block`, say `code`, or point at a chunk holding
    /// `group`.
    fn write(
        &mut self,
        cell: &AtomicU16,
        block: u32,
        code: u16,
        group: Option<&fast::v4::Chunk>,
        report: &mut FastReport,
    ) -> Result<(), DatapathError> {
        let old = cell.load(Ordering::Relaxed);
        if let Some(group) = group {
            if let Some(chunk) = fast::chunk(old) {
                // Still pointed at: each address's byte goes to its new answer.
                for (cell, byte) in self.cells.chunk(chunk)?.iter().zip(group) {
                    if cell.load(Ordering::Relaxed) != *byte {
                        cell.store(*byte, Ordering::Release);
                        report.codes_written += 1;
                    }
                }
                return Ok(());
            }
            let Some(chunk) = self.pool.take() else {
                tracing::warn!(block = %Ipv4Addr::from(block << 8), "fast table: the chunk pool is full; the trie answers for this /24");
                report.left_to_trie += 1;
                return self.write(cell, block, fast::DEEPER, None, report);
            };
            // Filled while nothing points at it, then published by one store.
            for (cell, byte) in self.cells.chunk(chunk)?.iter().zip(group) {
                cell.store(*byte, Ordering::Relaxed);
            }
            cell.store(fast::descend(chunk), Ordering::Release);
            report.chunks_filled += 1;
            report.codes_written += 1;
        } else if old != code {
            cell.store(code, Ordering::Release);
            report.codes_written += 1;
        }
        if let Some(chunk) = fast::chunk(old) {
            // Nothing points at it any more.
            self.pool.release_later(chunk);
            report.chunks_freed += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    /// A seeded xorshift generator: the property tests are reproducible.
    pub(in crate::datapath) struct Rng(u64);

    impl Rng {
        pub(in crate::datapath) fn new(seed: u64) -> Self {
            Self(seed | 1)
        }
        pub(in crate::datapath) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub(in crate::datapath) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    pub(in crate::datapath) fn set(list: &[(&str, u32)]) -> BTreeMap<IpNet, u32> {
        list.iter().map(|(n, r)| (n.parse().unwrap(), *r)).collect()
    }

    /// The prefixes to write and to remove when the maps go from `current` to
    /// `desired`, as `sync::apply` computes them.
    pub(in crate::datapath) fn changes(
        current: &BTreeMap<IpNet, u32>,
        desired: &BTreeMap<IpNet, u32>,
    ) -> (Vec<IpNet>, Vec<IpNet>) {
        let diff = crate::prefixes::diff(current, desired);
        (
            diff.upserts.iter().map(|(net, _)| *net).collect(),
            diff.removals,
        )
    }

    fn block_of(addr: &str) -> u32 {
        fast::v4::block(u32::from(addr.parse::<Ipv4Addr>().unwrap()))
    }

    /// The code (and chunk) chunk_codes computes for the block holding `addr`.
    fn code_at(layers: &Layers<'_>, addr: &str) -> (u16, Option<fast::v4::Chunk>) {
        let block = block_of(addr);
        let chunk = chunk_codes(layers, block >> CHUNK_BITS);
        match chunk.groups.get(&block) {
            Some(group) => (fast::FIRST_CHUNK, Some(*group)),
            None => (
                chunk.codes[(block - (chunk.index << CHUNK_BITS)) as usize],
                None,
            ),
        }
    }

    /// What the longest match says for `addr`, the slow obvious way.
    fn longest(layers: &Layers<'_>, addr: u32) -> u16 {
        for len in (0..=32u8).rev() {
            for layer in layers {
                if let Some(rule) = layer.get(&v4net(addr & mask(len), len)) {
                    return fast::allow(*rule);
                }
            }
        }
        fast::DENY
    }

    fn byte(rule: u32) -> u8 {
        fast::v4::byte(fast::allow(rule))
    }

    #[test]
    fn blocks_merge_and_skip_ipv6() {
        let nets: Vec<IpNet> = [
            "192.0.2.0/24",
            "192.0.3.0/25",
            "10.0.0.0/22",
            "2001:db8::/32",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let b = Blocks::of(&nets);
        assert_eq!(
            b.ranges(),
            [
                (block_of("10.0.0.0"), block_of("10.0.3.0")),
                (block_of("192.0.2.0"), block_of("192.0.3.0")),
            ]
        );
        assert!(Blocks::of(&nets[3..]).is_empty());
    }

    #[test]
    fn codes_follow_the_longest_match() {
        let s = set(&[
            ("198.18.0.0/20", 1),
            ("198.18.4.0/24", 2),
            ("198.18.4.64/26", 3),
            ("198.18.4.70/32", 4),
            ("203.0.113.7/32", 5),
            ("192.0.2.0/25", 6),
            ("192.0.2.128/25", 6),
            ("198.51.100.0/25", 300),
        ]);
        let layers: &Layers<'_> = &[&s];
        assert_eq!(code_at(layers, "198.18.0.1"), (fast::allow(1), None));
        assert_eq!(code_at(layers, "198.18.15.255"), (fast::allow(1), None));
        assert_eq!(code_at(layers, "198.18.16.0"), (fast::DENY, None));
        let group = code_at(layers, "198.18.4.0").1.unwrap();
        assert_eq!(group[0], byte(2));
        assert_eq!(group[64], byte(3));
        assert_eq!(group[70], byte(4));
        assert_eq!(group[127], byte(3));
        assert_eq!(group[128], byte(2));
        let group = code_at(layers, "203.0.113.0").1.unwrap();
        assert_eq!((group[6], group[7], group[8]), (1, byte(5), 1));
        // Two halves with the same rule are one direct code.
        assert_eq!(code_at(layers, "192.0.2.0"), (fast::allow(6), None));
        // A rule a byte code cannot carry is left to the trie inside a chunk ...
        let group = code_at(layers, "198.51.100.0").1.unwrap();
        assert_eq!((group[0], group[128]), (fast::DEEPER as u8, 1));
        // ... but not in a /24's code; beyond every code, always.
        let big = set(&[
            ("198.18.0.0/16", 300),
            ("198.19.0.0/16", fast::MAX_RULE + 1),
        ]);
        assert_eq!(code_at(&[&big], "198.18.9.9"), (fast::allow(300), None));
        assert_eq!(code_at(&[&big], "198.19.9.9"), (fast::DEEPER, None));
    }

    #[test]
    fn the_first_layer_wins_and_supernets_count() {
        let desired = set(&[("198.18.0.0/15", 1)]);
        let current = set(&[
            ("198.18.0.0/15", 2),
            ("198.0.0.0/8", 3),
            ("198.18.7.0/24", 4),
        ]);
        let layers: &Layers<'_> = &[&desired, &current];
        assert_eq!(code_at(layers, "198.18.0.1"), (fast::allow(1), None));
        assert_eq!(code_at(layers, "198.18.7.1"), (fast::allow(4), None));
        assert_eq!(code_at(layers, "198.200.0.1"), (fast::allow(3), None));
        assert_eq!(code_at(layers, "199.0.0.1"), (fast::DENY, None));
    }

    /// An in-memory table of `chunks` chunks, written by the same code as the maps.
    struct Table {
        codes: Vec<AtomicU64>,
        bytes: Vec<AtomicU64>,
        pool: Pool,
    }

    fn zeroed(bytes: usize) -> Vec<AtomicU64> {
        (0..bytes.div_ceil(8)).map(|_| AtomicU64::new(0)).collect()
    }

    impl Table {
        fn new(chunks: usize) -> Self {
            Self {
                codes: zeroed(fast::v4::BLOCKS * 2),
                bytes: zeroed(chunks * 256),
                pool: Pool::new(&vec![false; chunks]),
            }
        }

        /// Runs `f` on the table's cells.
        fn with<T>(&self, f: impl FnOnce(Cells<'_>) -> T) -> T {
            let (codes, bytes) = (
                Region::of_memory(&self.codes),
                Region::of_memory(&self.bytes),
            );
            f(Cells {
                codes: &codes,
                bytes: &bytes,
            })
        }

        /// The answers for `addrs`, read the way the program reads them.
        fn lookup(&self, addrs: &[u32]) -> Vec<u16> {
            self.with(|c| addrs.iter().map(|a| c.lookup(*a)).collect())
        }

        /// One sync, in `sync::apply`'s order.
        fn sync(&mut self, current: &BTreeMap<IpNet, u32>, desired: &BTreeMap<IpNet, u32>) {
            let (upserts, removals) = changes(current, desired);
            self.pool.recycle();
            let (codes, bytes) = (
                Region::of_memory(&self.codes),
                Region::of_memory(&self.bytes),
            );
            let mut w = Writer {
                cells: Cells {
                    codes: &codes,
                    bytes: &bytes,
                },
                pool: &mut self.pool,
            };
            w.refresh(&[desired, current], &Blocks::of(&upserts))
                .unwrap();
            w.refresh(&[desired], &Blocks::of(&removals)).unwrap();
        }

        /// Chunks the codes point at, each once.
        fn pointed_at(&self) -> usize {
            let mut seen = std::collections::BTreeSet::new();
            self.with(|c| {
                for block in 0..fast::v4::BLOCKS as u32 {
                    let code = c.code(block).unwrap().load(Ordering::Relaxed);
                    if let Some(chunk) = fast::chunk(code) {
                        assert!(seen.insert(chunk), "chunk {chunk} pointed at twice");
                    }
                }
            });
            seen.len()
        }
    }

    /// Random sets of prefixes around a few /16s (nested, overlapping, split /24s).
    fn random_set(rng: &mut Rng, n: usize) -> BTreeMap<IpNet, u32> {
        let mut s = BTreeMap::new();
        while s.len() < n {
            let len = 12 + rng.below(21) as u8;
            let addr = 0xC612_0000 | (rng.next() as u32 & 0x0003_FFFF);
            s.insert(v4net(addr & mask(len), len), rng.below(6) as u32);
        }
        s
    }

    #[test]
    fn the_table_matches_a_brute_force_longest_match_through_syncs() {
        let mut rng = Rng::new(0x1234_5678);
        let mut table = Table::new(fast::v4::CHUNKS);
        let mut current = BTreeMap::new();
        for _ in 0..8 {
            let desired = random_set(&mut rng, 400);
            table.sync(&current, &desired);
            let probes: Vec<u32> = (0..20_000)
                .map(|_| 0xC612_0000 | (rng.next() as u32 & 0x0003_FFFF))
                .collect();
            for (addr, got) in probes.iter().zip(table.lookup(&probes)) {
                let want = longest(&[&desired], *addr);
                assert_eq!(got, want, "{}", Ipv4Addr::from(*addr));
            }
            // Every chunk is pointed at once, or freed during this sync.
            assert!(table.pointed_at() <= table.pool.in_use());
            table.pool.recycle();
            assert_eq!(table.pointed_at(), table.pool.in_use());
            current = desired;
        }
    }

    #[test]
    fn a_full_pool_leaves_blocks_to_the_trie() {
        let mut rng = Rng::new(0xfeed);
        let mut table = Table::new(8);
        let mut current = BTreeMap::new();
        for _ in 0..4 {
            let desired = random_set(&mut rng, 300);
            table.sync(&current, &desired);
            let mut deeper = 0;
            let probes: Vec<u32> = (0..20_000)
                .map(|_| 0xC612_0000 | (rng.next() as u32 & 0x0003_FFFF))
                .collect();
            for (addr, got) in probes.iter().zip(table.lookup(&probes)) {
                match got {
                    fast::DEEPER => deeper += 1,
                    code => assert_eq!(code, longest(&[&desired], *addr)),
                }
            }
            assert!(deeper > 0, "more split /24s than chunks");
            table.pool.recycle();
            assert_eq!(table.pointed_at(), table.pool.in_use());
            current = desired;
        }
    }

    #[test]
    fn the_scan_drops_pointers_outside_the_pool_or_shared() {
        let table = Table::new(4);
        table.with(|c| {
            let code = |block| c.code(block).unwrap();
            code(10).store(fast::descend(1), Ordering::Relaxed);
            code(11).store(fast::descend(1), Ordering::Relaxed);
            code(12).store(fast::descend(9), Ordering::Relaxed);
            let pool = c.scan().unwrap();
            assert_eq!(pool.in_use(), 1);
            assert_eq!(code(10).load(Ordering::Relaxed), fast::descend(1));
            assert_eq!(code(11).load(Ordering::Relaxed), fast::DEEPER);
            assert_eq!(code(12).load(Ordering::Relaxed), fast::DEEPER);
        });
    }
}
