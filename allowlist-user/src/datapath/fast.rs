//! The IPv4 fast table (`allowlist_common::fast`): computing each /24's code from a
//! set of prefixes, and writing the codes the way the program can read them at any
//! moment.
//!
//! The table only ever repeats what the trie answers. A block's code is recomputed
//! from the prefixes the trie holds at that moment (given as layers of maps, see
//! [`Layers`]) and written in one store, so every address goes from its old answer to
//! its new one without an answer in between. A group is written before the code that
//! points at it, and a code that stops pointing at a group is written before the
//! group is deleted; a program that still finds the old code and then misses the
//! group asks the trie (the code `DEEPER`).
//!
//! The table is written through a shared memory mapping of the `BPF_F_MMAPABLE` array
//! (one store per code, no syscall), mapped for the duration of a sync only, so that
//! the agent's resident memory does not carry its 16 MiB between syncs. Groups are
//! hash-map updates, one syscall each.

use std::{
    collections::BTreeMap,
    io,
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicU8, Ordering},
};

use allowlist_common::{fast, maps as names};
use aya::maps::{HashMap, MapData, MapError};
use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;

use super::DatapathError;

/// Blocks per chunk: the codes are computed a /8 at a time.
const CHUNK_BITS: u32 = 16;
const CHUNK_BLOCKS: usize = 1 << CHUNK_BITS;
const LAST_BLOCK: u32 = (fast::BLOCKS - 1) as u32;

/// What a fast-table update wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FastReport {
    /// /24 codes changed (memory stores, not syscalls).
    pub codes_written: usize,
    /// Group entries written (one syscall each).
    pub groups_written: usize,
    /// Group entries deleted (one syscall each).
    pub groups_removed: usize,
    /// Blocks left to the trie because their group could not be stored.
    pub left_to_trie: usize,
}

impl std::ops::AddAssign for FastReport {
    fn add_assign(&mut self, other: Self) {
        self.codes_written += other.codes_written;
        self.groups_written += other.groups_written;
        self.groups_removed += other.groups_removed;
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
        let mut ranges: Vec<(u32, u32)> = nets
            .into_iter()
            .filter_map(|net| match net {
                IpNet::V4(n) => Some(block_range(n)),
                IpNet::V6(_) => None,
            })
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Self(merged)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn ranges(&self) -> &[(u32, u32)] {
        &self.0
    }
}

fn block_range(net: &Ipv4Net) -> (u32, u32) {
    let first = u32::from(net.network());
    let last = u32::from(net.broadcast());
    (fast::block(first), fast::block(last))
}

/// The codes of one chunk of blocks, and the groups of its split blocks.
struct Chunk {
    index: u32,
    codes: Vec<u8>,
    groups: BTreeMap<u32, fast::Group>,
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
                long.entry((fast::block(addr), len, addr)).or_insert(*rule);
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
            codes[slot] = fast::GROUP;
            groups.insert(block, group);
        }
    }
    Chunk {
        index,
        codes,
        groups,
    }
}

/// The fast table's two maps.
pub(super) struct FastV4 {
    table: MapData,
    groups: HashMap<MapData, u32, fast::Group>,
}

impl FastV4 {
    pub(super) fn new(table: MapData, groups: HashMap<MapData, u32, fast::Group>) -> Self {
        Self { table, groups }
    }

    /// Maps the table for writing, until the session is dropped.
    pub(super) fn session(&mut self) -> Result<Session<'_>, DatapathError> {
        Ok(Session {
            table: Mapping::new(&self.table)?,
            groups: &mut self.groups,
        })
    }
}

/// The table mapped for writing, and the group map.
pub(super) struct Session<'a> {
    table: Mapping,
    groups: &'a mut HashMap<MapData, u32, fast::Group>,
}

impl Session<'_> {
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
                for b in block..=end {
                    let code = c.codes[(b - (index << CHUNK_BITS)) as usize];
                    self.write(b, code, c.groups.get(&b), &mut report)?;
                }
                if end == hi {
                    break;
                }
                block = end + 1;
            }
        }
        Ok(report)
    }

    /// Makes every code what `layers` says, and deletes groups no code points at.
    pub(super) fn rebuild(&mut self, layers: &Layers<'_>) -> Result<FastReport, DatapathError> {
        let mut report = self.refresh(layers, &Blocks::all())?;
        let keys: Vec<u32> = self
            .groups
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::FAST_V4_GROUPS))?;
        for block in keys {
            if block > LAST_BLOCK || self.table.load(block) != fast::GROUP {
                self.remove_group(block, &mut report)?;
            }
        }
        Ok(report)
    }

    fn write(
        &mut self,
        block: u32,
        code: u8,
        group: Option<&fast::Group>,
        report: &mut FastReport,
    ) -> Result<(), DatapathError> {
        let old = self.table.load(block);
        if let (fast::GROUP, Some(group)) = (code, group) {
            // The group first: a program that finds the code finds the group.
            match self.groups.insert(block, group, 0) {
                Ok(()) => {
                    report.groups_written += 1;
                    if old != fast::GROUP {
                        self.table.store(block, fast::GROUP);
                        report.codes_written += 1;
                    }
                    return Ok(());
                }
                Err(e) => {
                    // Full or out of memory: this block is left to the trie.
                    tracing::warn!(block = %Ipv4Addr::from(block << 8), error = %e, "fast table: cannot store a group; the trie answers for this /24");
                    report.left_to_trie += 1;
                    return self.write(block, fast::DEEPER, None, report);
                }
            }
        }
        if old != code {
            self.table.store(block, code);
            report.codes_written += 1;
        }
        if old == fast::GROUP {
            // Nothing points at the group any more.
            self.remove_group(block, report)?;
        }
        Ok(())
    }

    fn remove_group(&mut self, block: u32, report: &mut FastReport) -> Result<(), DatapathError> {
        match self.groups.remove(&block) {
            Ok(()) => {
                report.groups_removed += 1;
                Ok(())
            }
            Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(names::FAST_V4_GROUPS)(e)),
        }
    }
}

/// The table's memory, shared with the kernel.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(table: &MapData) -> Result<Self, DatapathError> {
        let len = fast::BLOCKS;
        // SAFETY: a shared mapping of a BPF_F_MMAPABLE array of exactly `len` bytes of
        // data; the kernel checks the length and the flag.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                table.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DatapathError::MapFastTable(io::Error::last_os_error()));
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    fn cell(&self, block: u32) -> &AtomicU8 {
        assert!((block as usize) < self.len, "block {block} out of range");
        // SAFETY: in bounds (checked above), valid for as long as `self`; the program
        // reads the same bytes concurrently, hence atomic accesses.
        unsafe { AtomicU8::from_ptr(self.ptr.add(block as usize)) }
    }

    fn load(&self, block: u32) -> u8 {
        self.cell(block).load(Ordering::Relaxed)
    }

    /// Release: everything written before (a group, the trie) is visible to a reader
    /// that sees this code.
    fn store(&self, block: u32, code: u8) {
        self.cell(block).store(code, Ordering::Release);
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map {
        name: name.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &[(&str, u32)]) -> BTreeMap<IpNet, u32> {
        list.iter().map(|(n, r)| (n.parse().unwrap(), *r)).collect()
    }

    fn block_of(addr: &str) -> u32 {
        fast::block(u32::from(addr.parse::<Ipv4Addr>().unwrap()))
    }

    /// The code (and group) chunk_codes computes for the block holding `addr`.
    fn code_at(layers: &Layers<'_>, addr: &str) -> (u8, Option<fast::Group>) {
        let block = block_of(addr);
        let chunk = chunk_codes(layers, block >> CHUNK_BITS);
        (
            chunk.codes[(block - (chunk.index << CHUNK_BITS)) as usize],
            chunk.groups.get(&block).copied(),
        )
    }

    /// What the longest match says for `addr`, the slow obvious way.
    fn longest(layers: &Layers<'_>, addr: u32) -> u8 {
        for len in (0..=32u8).rev() {
            for layer in layers {
                if let Some(rule) = layer.get(&v4net(addr & mask(len), len)) {
                    return fast::allow(*rule);
                }
            }
        }
        fast::DENY
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
        ]);
        let layers: &Layers<'_> = &[&s];
        assert_eq!(code_at(layers, "198.18.0.1"), (fast::allow(1), None));
        assert_eq!(code_at(layers, "198.18.15.255"), (fast::allow(1), None));
        assert_eq!(code_at(layers, "198.18.16.0"), (fast::DENY, None));
        let (code, group) = code_at(layers, "198.18.4.0");
        assert_eq!(code, fast::GROUP);
        let group = group.unwrap();
        assert_eq!(group[0], fast::allow(2));
        assert_eq!(group[64], fast::allow(3));
        assert_eq!(group[70], fast::allow(4));
        assert_eq!(group[127], fast::allow(3));
        assert_eq!(group[128], fast::allow(2));
        let (code, group) = code_at(layers, "203.0.113.0");
        assert_eq!(code, fast::GROUP);
        let group = group.unwrap();
        assert_eq!(
            (group[6], group[7], group[8]),
            (fast::DENY, fast::allow(5), fast::DENY)
        );
        // Two halves with the same rule are one direct code.
        assert_eq!(code_at(layers, "192.0.2.0"), (fast::allow(6), None));
        // A rule beyond the codes is left to the trie.
        let big = set(&[("198.18.0.0/16", fast::MAX_RULE + 1)]);
        assert_eq!(code_at(&[&big], "198.18.9.9"), (fast::DEEPER, None));
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

    #[test]
    fn codes_match_a_brute_force_longest_match() {
        // Deterministic pseudo-random prefixes around a few /16s.
        let mut x: u32 = 0x1234_5678;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let mut s = BTreeMap::new();
        for _ in 0..400 {
            let len = 12 + (next() % 21) as u8;
            let addr = 0xC612_0000 | (next() & 0x0003_FFFF);
            s.insert(v4net(addr & mask(len), len), next() % 4);
        }
        let layers: &Layers<'_> = &[&s];
        for _ in 0..20_000 {
            let addr = 0xC612_0000 | (next() & 0x0003_FFFF);
            let (code, group) = code_at(layers, &Ipv4Addr::from(addr).to_string());
            let got = match group {
                Some(g) => g[(addr & 0xFF) as usize],
                None => code,
            };
            assert_eq!(got, longest(layers, addr), "{}", Ipv4Addr::from(addr));
        }
    }
}
