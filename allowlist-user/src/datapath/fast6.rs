//! The IPv6 fast table (`allowlist_common::fast::v6`): a path-compressed multibit trie
//! of 256-code chunks with leaf pushing, a 16-bit root and 8-bit strides down to /64,
//! computed from a set of prefixes and written the way the program can read it at any
//! moment.
//!
//! Path compression: a region whose 256 sub-regions all say the same, but for one
//! that splits further, gets no chunk; the slot that would point at it points at that
//! sub-region's chunk instead, whose header names its region and whose `default` is
//! what the skipped levels say (the slot's value before leaf pushing). A sparse prefix
//! therefore costs one chunk below the root, wherever it ends.
//!
//! The table only ever repeats what the trie answers, as the IPv4 table does (see
//! `fast`). A /16's subtree is recomputed whole from the prefixes the trie holds, then
//! written into the table code by code, changing only what differs: a code that stays
//! a pointer to a chunk of the region its new subtree needs is followed and the chunk
//! changed in place (its `default` too, in one store); a new subtree, or one whose
//! region changed, is built in free chunks, bottom up, headers included, before the
//! one store that publishes it; the chunks of a subtree a code stops pointing at are
//! freed after that store, and reused from the next sync on (see `pool`). A chunk's
//! region (`net`, `mask`, `shift`) never changes while it is published. Every code
//! changes in one store, and an address reads one code or the default of each chunk
//! on its way, so every address goes from its old answer to its new one directly. What
//! the table cannot hold is left to the trie (`DEEPER`): the /64 of a longer prefix,
//! and a subtree for which the pool has no chunk.

use std::{
    collections::BTreeMap,
    net::Ipv6Addr,
    sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering},
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
/// Bytes of a chunk (an element of the map).
const CHUNK_BYTES: usize = size_of::<fast::v6::Chunk>();

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

/// A region of the top 64 bits of the address: a /16 to a /64 (a chunk's region is
/// /16 to /56, a multiple of 8 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    net: u64,
    len: u8,
}

impl Span {
    fn of_root(entry: u32) -> Self {
        Self {
            net: u64::from(entry) << 48,
            len: ROOT_LEN,
        }
    }

    /// Sub-region `index` of a chunk of this region.
    fn slot(self, index: usize) -> Self {
        Self {
            net: self.net | (index as u64) << fast::v6::shift(self.len),
            len: self.len + STRIDE,
        }
    }

    fn mask(self) -> u64 {
        if self.len >= 64 {
            u64::MAX
        } else {
            fast::v6::mask(self.len)
        }
    }

    /// Whether `inner` lies within this region (or is it).
    fn holds(self, inner: Self) -> bool {
        inner.len >= self.len && inner.net & self.mask() == self.net
    }

    /// The region a chunk's header names, if the header is one the writer could have
    /// written: a mask of a multiple of 8 bits from /16 to /56, the matching shift, and
    /// nothing set in `net` past the mask.
    fn of_header(net: u64, mask: u64, shift: u32) -> Option<Self> {
        let len = mask.leading_ones() as u8;
        let fits = len.is_multiple_of(STRIDE)
            && (fast::v6::MIN_REGION..fast::v6::MAX_LEN).contains(&len)
            && mask == fast::v6::mask(len)
            && shift == fast::v6::shift(len)
            && net & !mask == 0;
        fits.then_some(Self { net, len })
    }
}

/// What the table should hold for a region: one answer, or a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Leaf(u16),
    Split(Split),
}

/// A chunk: 256 sub-regions of `span`, and the answer for the addresses that reach it
/// outside `span` (its `span` may lie deeper than the slot pointing at it).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Split {
    span: Span,
    default: u16,
    entries: Vec<Node>,
}

/// The subtree of region `span` whose addresses are otherwise `base`, from the
/// prefixes strictly inside it; path-compressed.
fn build(base: u16, span: Span, mut inside: Vec<Prefix>) -> Node {
    if inside.is_empty() {
        return Node::Leaf(base);
    }
    if span.len >= fast::v6::MAX_LEN {
        // Longer than the table resolves: the trie answers for the /64.
        return Node::Leaf(fast::DEEPER);
    }
    let child_len = span.len + STRIDE;
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
        entries[i] = build(codes[i], span.slot(i), group);
    }
    if let Node::Leaf(first) = entries[0]
        && entries.iter().all(|e| e == &Node::Leaf(first))
    {
        return Node::Leaf(first);
    }
    // Path compression: when every sub-region but one says `base`, and that one
    // splits, its chunk can take this region's place, with `base` as its default
    // provided that the addresses of the sub-region outside the chunk's region (none
    // if the chunk's region is the sub-region) say `base` as well.
    let mut others = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| *e != &Node::Leaf(base));
    if let (Some((i, Node::Split(only))), None) = (others.next(), others.next())
        && (only.default == base || only.span == span.slot(i))
    {
        let Node::Split(mut only) = entries.swap_remove(i) else {
            unreachable!("entry {i} splits");
        };
        only.default = base;
        return Node::Split(only);
    }
    Node::Split(Split {
        span,
        default: base,
        entries,
    })
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
                Span::of_root(entry),
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
        let region = Region::of_elements(
            &self.table,
            fast::v6::CHUNKS * CHUNK_BYTES,
            CHUNK_BYTES,
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

/// A chunk's header, as cells.
struct Header<'a> {
    net: &'a AtomicU64,
    mask: &'a AtomicU64,
    shift: &'a AtomicU32,
    default: &'a AtomicU16,
}

impl Header<'_> {
    /// The region the header names, if it is a valid one.
    fn span(&self) -> Option<Span> {
        Span::of_header(
            self.net.load(Ordering::Relaxed),
            self.mask.load(Ordering::Relaxed),
            self.shift.load(Ordering::Relaxed),
        )
    }
}

/// The pool's chunks: the root's 2^16 codes, then a header and 256 codes per chunk.
#[derive(Clone, Copy)]
pub(super) struct Cells<'a>(&'a Region<'a>);

impl<'a> Cells<'a> {
    fn root(&self, entry: u32) -> Result<&'a AtomicU16, DatapathError> {
        let (chunk, code) = (entry as usize / 256, entry as usize % 256);
        self.0
            .u16((chunk * CHUNK_BYTES + fast::v6::HEADER) / 2 + code)
    }

    /// The codes of chunk `chunk` (numbered from the first chunk after the root).
    fn codes(&self, chunk: u32) -> Result<&'a [AtomicU16], DatapathError> {
        let at = fast::v6::pool_index(chunk) as usize * CHUNK_BYTES;
        self.0.u16s((at + fast::v6::HEADER) / 2, 256)
    }

    fn header(&self, chunk: u32) -> Result<Header<'a>, DatapathError> {
        let at = fast::v6::pool_index(chunk) as usize * CHUNK_BYTES;
        Ok(Header {
            net: self.0.u64(at / 8)?,
            mask: self.0.u64(at / 8 + 1)?,
            shift: self.0.u32(at / 4 + 4)?,
            default: self.0.u16(at / 2 + 10)?,
        })
    }

    fn chunk_count(&self) -> u32 {
        (self.0.len() / CHUNK_BYTES - fast::v6::ROOT_CHUNKS) as u32
    }

    /// The pool's state as the codes say (see `fast::Cells::scan`). A pointer is
    /// replaced by `DEEPER` when its chunk is outside the pool, already reached, or has
    /// a header that is not a valid region within the pointing slot's region (a slot
    /// of a /64 holds none), or not the slot's region itself for a direct pointer; a
    /// chunk's default that points at a chunk is `DEEPER` too.
    fn scan(&self) -> Result<Pool, DatapathError> {
        let mut used = vec![false; self.chunk_count() as usize];
        let mut stack: Vec<(&AtomicU16, Span)> = Vec::new();
        for e in 0..ROOT_ENTRIES {
            stack.push((self.root(e)?, Span::of_root(e)));
        }
        while let Some((cell, slot)) = stack.pop() {
            let Some((chunk, compressed)) = fast::v6::target(cell.load(Ordering::Relaxed)) else {
                continue;
            };
            let header = match used.get(chunk as usize) {
                Some(false) => Some(self.header(chunk)?),
                _ => None,
            };
            let span = header
                .as_ref()
                .and_then(Header::span)
                .filter(|span| slot.holds(*span) && (compressed || *span == slot));
            let (Some(header), Some(span)) = (header, span) else {
                cell.store(fast::DEEPER, Ordering::Release);
                continue;
            };
            used[chunk as usize] = true;
            if fast::v6::target(header.default.load(Ordering::Relaxed)).is_some() {
                header.default.store(fast::DEEPER, Ordering::Release);
            }
            let codes = self.codes(chunk)?;
            stack.extend(codes.iter().enumerate().map(|(i, c)| (c, span.slot(i))));
        }
        Ok(Pool::new(&used))
    }

    /// The answer for `addr`, read the way the program reads it.
    #[cfg(test)]
    fn lookup(&self, addr: u128) -> u16 {
        self.walk(addr).0
    }

    /// The answer for `addr`, and the chunks below the root read for it.
    #[cfg(test)]
    fn walk(&self, addr: u128) -> (u16, usize) {
        let hi = (addr >> 64) as u64;
        let mut code = self
            .root((addr >> 112) as u32)
            .unwrap()
            .load(Ordering::Acquire);
        let mut shift = fast::v6::ROOT_SHIFT;
        let mut reads = 0;
        while reads < fast::v6::LEVELS {
            let Some((chunk, compressed)) = fast::v6::target(code) else {
                return (code, reads);
            };
            reads += 1;
            if compressed {
                let header = self.header(chunk).unwrap();
                let (net, mask) = (
                    header.net.load(Ordering::Acquire),
                    header.mask.load(Ordering::Acquire),
                );
                if hi & mask != net {
                    code = header.default.load(Ordering::Acquire);
                    break;
                }
                shift = header.shift.load(Ordering::Acquire);
            }
            code = self.codes(chunk).unwrap()[(hi.wrapping_shr(shift) & 0xFF) as usize]
                .load(Ordering::Acquire);
            shift = shift.wrapping_sub(8);
        }
        let code = if fast::v6::target(code).is_some() {
            fast::DEEPER
        } else {
            code
        };
        (code, reads)
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
                self.write(cell, Span::of_root(entry), node, &mut report)
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

    /// Makes `cell` (a code in a published chunk, or the root, for region `slot`) say
    /// `node`.
    fn write(
        &mut self,
        cell: &AtomicU16,
        slot: Span,
        node: Node,
        report: &mut FastReport,
    ) -> Result<(), DatapathError> {
        let old = cell.load(Ordering::Relaxed);
        let code = match node {
            Node::Split(split) => {
                let compress = split.span != slot;
                if let Some((chunk, compressed)) = fast::v6::target(old) {
                    let header = self.cells.header(chunk)?;
                    if header.span() == Some(split.span) && compressed == compress {
                        // Still pointed at, same region: changed in place, code by code.
                        if header.default.load(Ordering::Relaxed) != split.default {
                            header.default.store(split.default, Ordering::Release);
                            report.codes_written += 1;
                        }
                        let codes = self.cells.codes(chunk)?;
                        for (i, (cell, entry)) in codes.iter().zip(split.entries).enumerate() {
                            self.write(cell, split.span.slot(i), entry, report)?;
                        }
                        return Ok(());
                    }
                }
                match self.fill(split, report)? {
                    Some(chunk) => pointer(chunk, compress),
                    None => {
                        report.left_to_trie += 1;
                        fast::DEEPER
                    }
                }
            }
            Node::Leaf(code) => code,
        };
        if old != code {
            cell.store(code, Ordering::Release);
            report.codes_written += 1;
        }
        if let Some((chunk, _)) = fast::v6::target(old)
            && old != code
        {
            // Nothing points at the old subtree any more.
            self.release_subtree(chunk, report)?;
        }
        Ok(())
    }

    /// Builds `split` in a free chunk (and its subtrees in others), nothing pointing
    /// at any of them yet; `None` when the pool is full (sub-regions that find no
    /// chunk are left to the trie inside a chunk that is filled).
    fn fill(
        &mut self,
        split: Split,
        report: &mut FastReport,
    ) -> Result<Option<u32>, DatapathError> {
        let Some(chunk) = self.pool.take() else {
            return Ok(None);
        };
        report.chunks_filled += 1;
        let header = self.cells.header(chunk)?;
        header.net.store(split.span.net, Ordering::Relaxed);
        header.mask.store(split.span.mask(), Ordering::Relaxed);
        header
            .shift
            .store(fast::v6::shift(split.span.len), Ordering::Relaxed);
        header.default.store(split.default, Ordering::Relaxed);
        let codes = self.cells.codes(chunk)?;
        for (i, (cell, entry)) in codes.iter().zip(split.entries).enumerate() {
            let code = match entry {
                Node::Leaf(code) => code,
                Node::Split(sub) => {
                    let compress = sub.span != split.span.slot(i);
                    match self.fill(sub, report)? {
                        Some(child) => pointer(child, compress),
                        None => {
                            report.left_to_trie += 1;
                            fast::DEEPER
                        }
                    }
                }
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
                    .codes(chunk)?
                    .iter()
                    .filter_map(|c| fast::v6::target(c.load(Ordering::Relaxed)))
                    .map(|(chunk, _)| chunk),
            );
        }
        Ok(())
    }
}

/// The code pointing at `chunk`, compressed if its region lies deeper than the slot.
fn pointer(chunk: u32, compressed: bool) -> u16 {
    if compressed {
        fast::v6::compressed(chunk)
    } else {
        fast::v6::direct(chunk)
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
                codes: (0..(fast::v6::ROOT_CHUNKS + chunks) * CHUNK_BYTES / 8)
                    .map(|_| AtomicU64::new(0))
                    .collect(),
                pool: Pool::new(&vec![false; chunks]),
            };
            table.write(|w| w.rebuild(&[&BTreeMap::new()]).map(drop));
            table
        }

        fn write(&mut self, f: impl FnOnce(&mut Writer<'_>) -> Result<(), DatapathError>) {
            let region = Region::of_memory_elements(&self.codes, CHUNK_BYTES);
            f(&mut Writer {
                cells: Cells(&region),
                pool: &mut self.pool,
            })
            .unwrap();
        }

        fn with<T>(&self, f: impl FnOnce(Cells<'_>) -> T) -> T {
            f(Cells(&Region::of_memory_elements(&self.codes, CHUNK_BYTES)))
        }

        /// The answers for `addrs`, read the way the program reads them.
        fn lookup(&self, addrs: &[u128]) -> Vec<u16> {
            self.with(|c| addrs.iter().map(|a| c.lookup(*a)).collect())
        }

        /// One sync, in `sync::apply`'s order.
        fn sync(
            &mut self,
            current: &BTreeMap<IpNet, u32>,
            desired: &BTreeMap<IpNet, u32>,
        ) -> FastReport {
            self.pool.recycle();
            write_sync(&self.codes, &mut self.pool, current, desired)
        }

        /// The answer for `a` and the chunks read for it below the root.
        fn walk(&self, a: &str) -> (u16, usize) {
            self.with(|c| c.walk(addr(a)))
        }

        /// Chunks in use once this sync's freed ones are recycled.
        fn settled(&mut self) -> usize {
            self.pool.recycle();
            assert_eq!(self.reachable(), self.pool.in_use());
            self.pool.in_use()
        }

        /// Chunks reachable from the root, each reached once.
        fn reachable(&self) -> usize {
            self.with(|cells| {
                let mut seen = std::collections::BTreeSet::new();
                let mut stack: Vec<u32> = (0..ROOT_ENTRIES)
                    .filter_map(|e| chunk_of(cells.root(e).unwrap().load(Ordering::Relaxed)))
                    .collect();
                while let Some(chunk) = stack.pop() {
                    assert!(seen.insert(chunk), "chunk {chunk} reached twice");
                    stack.extend(
                        cells
                            .codes(chunk)
                            .unwrap()
                            .iter()
                            .filter_map(|c| chunk_of(c.load(Ordering::Relaxed))),
                    );
                }
                seen.len()
            })
        }
    }

    /// A sync's writes, in `sync::apply`'s order, into `codes` (which another thread
    /// may be reading), taking chunks from `pool` as it is.
    fn write_sync(
        codes: &[AtomicU64],
        pool: &mut Pool,
        current: &BTreeMap<IpNet, u32>,
        desired: &BTreeMap<IpNet, u32>,
    ) -> FastReport {
        let (upserts, removals) = changes(current, desired);
        let region = Region::of_memory_elements(codes, CHUNK_BYTES);
        let mut writer = Writer {
            cells: Cells(&region),
            pool,
        };
        let mut report = writer
            .refresh(&[desired, current], &Roots::of(&upserts))
            .unwrap();
        report += writer.refresh(&[desired], &Roots::of(&removals)).unwrap();
        report
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

    /// Random prefixes /20 to /72 under a few /16s, so that they nest and share chunks,
    /// and a few in sparse places, so that paths are compressed and split.
    fn random_set(rng: &mut Rng, n: usize) -> BTreeMap<IpNet, u32> {
        let mut s = BTreeMap::new();
        while s.len() < n {
            let len = 20 + rng.below(53) as u8;
            let a = random_addr(rng);
            s.insert(v6net(a & mask(len), len), rng.below(6) as u32);
        }
        s
    }

    /// An address in one of four /16s, with its bits below /72 random but (most of
    /// the time) few values between /16 and /72 so that prefixes and addresses meet.
    fn random_addr(rng: &mut Rng) -> u128 {
        let top = [0x2001u128, 0x2400, 0x2a00, 0x2a01][rng.below(4) as usize] << 112;
        let mut mid = 0u128;
        for byte in 0..7 {
            let value = if rng.below(16) == 0 {
                rng.next() as u8
            } else {
                rng.below(3) as u8
            };
            mid |= u128::from(value) << (104 - 8 * byte);
        }
        top | mid | u128::from(rng.next())
    }

    /// Random addresses, and for each prefix of `set` one inside it and one just
    /// outside (a bit above its length flipped): the edges of compressed regions.
    fn probes(rng: &mut Rng, set: &BTreeMap<IpNet, u32>) -> Vec<u128> {
        let mut probes: Vec<u128> = (0..20_000).map(|_| random_addr(rng)).collect();
        for net in set.keys() {
            let IpNet::V6(n) = net else { continue };
            let len = n.prefix_len();
            let inside = u128::from(n.network()) | (u128::from(rng.next()) & !mask(len));
            let flip = 1u128 << (128 - 1 - rng.below(u64::from(len)) as u32);
            probes.extend([inside, inside ^ flip]);
        }
        probes
    }

    #[test]
    fn the_table_matches_a_brute_force_longest_match_through_syncs() {
        let mut rng = Rng::new(0x6666);
        let mut table = Table::new(4096);
        let mut current = BTreeMap::new();
        for round in 0..9 {
            let desired = random_set(&mut rng, 300);
            table.sync(&current, &desired);
            if round % 3 == 2 {
                // A previous agent's table, damaged: adopted by a scan, then rebuilt
                // from the trie as after every load.
                corrupt(&mut rng, &table);
                table.pool = table.with(|cells| cells.scan().unwrap());
                assert_eq!(table.reachable(), table.pool.in_use());
                table.write(|w| w.rebuild(&[&desired]).map(drop));
            }
            let probes = probes(&mut rng, &desired);
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
            // The syncs leave the shape a table built at once has: as compressed.
            let mut fresh = Table::new(4096);
            fresh.sync(&BTreeMap::new(), &desired);
            assert_eq!(table.settled(), fresh.settled());
            current = desired;
        }
    }

    /// While a sync writes the table, a reader walking it as the program does never
    /// sees a source whose answer the sync keeps answered otherwise, though every free
    /// chunk holds garbage (a header that takes every address, codes that allow
    /// rule 1023): a new chunk is filled before the store that publishes it, and a
    /// freed one is not reused by the same sync. Before each sync about a quarter of
    /// the prefixes go and new ones come, some inside kept ones, so that paths are
    /// split, compressed and moved.
    #[test]
    fn a_reader_during_a_sync_sees_kept_answers_unchanged() {
        use std::sync::atomic::AtomicBool;

        const SYNCS: usize = 16;
        let garbage = fast::allow(1023);
        let mut rng = Rng::new(0x5eed);
        let mut table = Table::new(4096);
        let mut current = BTreeMap::new();
        let mut reads = 0usize;
        for _ in 0..SYNCS {
            let mut desired: BTreeMap<IpNet, u32> = current
                .iter()
                .filter(|_| rng.below(4) != 0)
                .map(|(n, r)| (*n, *r))
                .collect();
            desired.extend(random_set(&mut rng, 60));
            let kept: Vec<Ipv6Net> = desired
                .keys()
                .filter_map(|n| match n {
                    IpNet::V6(n) if n.prefix_len() < 64 => Some(*n),
                    _ => None,
                })
                .collect();
            for _ in 0..20.min(kept.len()) {
                let outer = kept[rng.below(kept.len() as u64) as usize];
                let len =
                    outer.prefix_len() + 1 + rng.below(u64::from(64 - outer.prefix_len())) as u8;
                let a = u128::from(outer.network())
                    | (random_addr(&mut rng) & !mask(outer.prefix_len()));
                desired.insert(v6net(a & mask(len), len), rng.below(6) as u32);
            }
            // A tenth of the probes: the brute-force answers are slow in a debug build.
            let stable: Vec<(u128, u16)> = probes(&mut rng, &current)
                .into_iter()
                .chain(probes(&mut rng, &desired))
                .step_by(10)
                .filter(|a| {
                    !holds_longer_than_64(&current, *a) && !holds_longer_than_64(&desired, *a)
                })
                .map(|a| (a, longest(&[&current], a)))
                .filter(|(a, old)| *old == longest(&[&desired], *a))
                .collect();

            // The chunks the sync may take, garbage.
            table.pool.recycle();
            let mut free = Vec::new();
            while let Some(chunk) = table.pool.take() {
                free.push(chunk);
            }
            table.with(|cells| {
                for &chunk in &free {
                    let h = cells.header(chunk).unwrap();
                    h.net.store(0, Ordering::Relaxed);
                    h.mask.store(0, Ordering::Relaxed);
                    h.shift.store(0, Ordering::Relaxed);
                    h.default.store(garbage, Ordering::Relaxed);
                    for c in cells.codes(chunk).unwrap() {
                        c.store(garbage, Ordering::Relaxed);
                    }
                }
            });
            for chunk in free {
                table.pool.release_later(chunk);
            }
            table.pool.recycle();

            let Table { codes, pool } = &mut table;
            let codes: &[AtomicU64] = codes;
            let done = AtomicBool::new(false);
            let wrong = std::thread::scope(|scope| {
                let reader = scope.spawn(|| {
                    let region = Region::of_memory_elements(codes, CHUNK_BYTES);
                    let cells = Cells(&region);
                    let mut n = 0usize;
                    loop {
                        let finished = done.load(Ordering::Acquire);
                        for &(a, want) in &stable {
                            n += 1;
                            let got = cells.lookup(a);
                            if got != want {
                                return (n, Some((Ipv6Addr::from(a), want, got)));
                            }
                        }
                        // One whole pass after the writer finished, then stop.
                        if finished {
                            return (n, None);
                        }
                    }
                });
                write_sync(codes, pool, &current, &desired);
                done.store(true, Ordering::Release);
                reader.join().unwrap()
            });
            reads += wrong.0;
            assert_eq!(
                wrong.1, None,
                "a kept source answered otherwise during a sync"
            );
            current = desired;
        }
        eprintln!("{reads} lookups during {SYNCS} syncs");
    }

    /// Damages headers, defaults and pointers of chunks in use, and pointers of the
    /// root.
    fn corrupt(rng: &mut Rng, table: &Table) {
        table.with(|cells| {
            let chunks = cells.chunk_count();
            for _ in 0..40 {
                let chunk = rng.below(u64::from(chunks)) as u32;
                let h = cells.header(chunk).unwrap();
                match rng.below(6) {
                    0 => h.net.store(rng.next(), Ordering::Relaxed),
                    1 => h.mask.store(rng.next() << 8, Ordering::Relaxed),
                    2 => h.shift.store(rng.below(64) as u32, Ordering::Relaxed),
                    3 => h.default.store(rng.next() as u16, Ordering::Relaxed),
                    4 => cells.codes(chunk).unwrap()[rng.below(256) as usize]
                        .store(rng.next() as u16 | fast::FIRST_CHUNK, Ordering::Relaxed),
                    _ => cells
                        .root(0x2001)
                        .unwrap()
                        .store(rng.next() as u16 | fast::FIRST_CHUNK, Ordering::Relaxed),
                }
            }
        });
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
            let probes = probes(&mut rng, &desired);
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

    /// Writes a chunk's header as the writer would for `span` (`net`, `len`).
    fn plant(cells: Cells<'_>, chunk: u32, net: u64, len: u8, default: u16) {
        let h = cells.header(chunk).unwrap();
        h.net.store(net, Ordering::Relaxed);
        h.mask.store(fast::v6::mask(len), Ordering::Relaxed);
        h.shift.store(fast::v6::shift(len), Ordering::Relaxed);
        h.default.store(default, Ordering::Relaxed);
    }

    fn chunk_of(code: u16) -> Option<u32> {
        fast::v6::target(code).map(|(chunk, _)| chunk)
    }

    #[test]
    fn the_scan_drops_bad_pointers_and_headers() {
        use fast::v6::{compressed, direct};
        let table = Table::new(7);
        table.with(|cells| {
            let root = |e| cells.root(e).unwrap();
            let codes = |n| cells.codes(n).unwrap();
            let load = |c: &AtomicU16| c.load(Ordering::Relaxed);
            // 2001:db8::/32, straight below the root.
            plant(cells, 0, 0x2001_0db8 << 32, 32, fast::DENY);
            root(0x2001).store(compressed(0), Ordering::Relaxed);
            // The same chunk from a /16 that does not hold its region.
            root(0x2002).store(compressed(0), Ordering::Relaxed);
            // Outside the pool.
            root(0x2003).store(direct(7), Ordering::Relaxed);
            // 2001:db8:100::/40 from its slot, kept; from the next slot, dropped.
            plant(cells, 1, 0x2001_0db8_0100 << 16, 40, fast::DENY);
            codes(0)[1].store(direct(1), Ordering::Relaxed);
            codes(0)[2].store(direct(1), Ordering::Relaxed);
            // A mask that does not match the shift.
            plant(cells, 2, 0x2001_0db8_0100 << 16, 48, fast::DENY);
            cells.header(2).unwrap().shift.store(16, Ordering::Relaxed);
            codes(1)[0].store(compressed(2), Ordering::Relaxed);
            // 2004::/16 with a default that points at a chunk.
            plant(cells, 3, 0x2004 << 48, 16, compressed(0));
            root(0x2004).store(direct(3), Ordering::Relaxed);
            // A /56 in 2004:500::/24, whose slots (/64s) can point at no chunk, not
            // even one of a valid region; and a pointer back up.
            plant(cells, 4, 0x2004_0500 << 32, 56, fast::DENY);
            plant(cells, 5, 0x2004_0500 << 32, 56, fast::DENY);
            codes(3)[5].store(compressed(4), Ordering::Relaxed);
            codes(4)[0].store(compressed(5), Ordering::Relaxed);
            codes(3)[6].store(compressed(0), Ordering::Relaxed);
            // A direct pointer to a region deeper than its slot.
            plant(cells, 6, 0x2005_0100 << 32, 24, fast::DENY);
            root(0x2005).store(direct(6), Ordering::Relaxed);

            let pool = cells.scan().unwrap();
            assert_eq!(load(root(0x2001)), compressed(0));
            for e in [0x2002, 0x2003, 0x2005] {
                assert_eq!(load(root(e)), fast::DEEPER, "{e:x}");
            }
            assert_eq!(load(&codes(0)[1]), direct(1));
            assert_eq!(load(&codes(0)[2]), fast::DEEPER);
            assert_eq!(load(&codes(1)[0]), fast::DEEPER);
            assert_eq!(load(root(0x2004)), direct(3));
            assert_eq!(load(cells.header(3).unwrap().default), fast::DEEPER);
            assert_eq!(load(&codes(3)[5]), compressed(4));
            assert_eq!(load(&codes(4)[0]), fast::DEEPER);
            assert_eq!(load(&codes(3)[6]), fast::DEEPER);
            // Chunks 0, 1, 3 and 4.
            assert_eq!(pool.in_use(), 4);
        });
    }

    #[test]
    fn a_lone_64_takes_one_chunk() {
        let mut table = Table::new(64);
        table.sync(&BTreeMap::new(), &set(&[("2001:db8:1:2::/64", 1)]));
        assert_eq!(table.settled(), 1);
        for (a, want) in [
            ("2001:db8:1:2::1", (fast::allow(1), 1)),
            ("2001:db8:1:2:ffff::1", (fast::allow(1), 1)),
            // In the chunk's region, another /64.
            ("2001:db8:1:3::1", (fast::DENY, 1)),
            // Outside it, in the /16: the chunk's default.
            ("2001:db8:2:2::1", (fast::DENY, 1)),
            ("2001:1::1", (fast::DENY, 1)),
            ("2002::1", (fast::DENY, 0)),
        ] {
            assert_eq!(table.walk(a), want, "{a}");
        }
    }

    #[test]
    fn nested_prefixes_take_a_chunk_per_level_that_branches() {
        let s = set(&[
            ("2001:db8::/32", 1),
            ("2001:db8:100::/40", 2),
            ("2001:db8:1ab::/48", 3),
            ("2001:db8:1ab:cd00::/56", 4),
        ]);
        let mut table = Table::new(64);
        table.sync(&BTreeMap::new(), &s);
        // The /32's chunk (the /40 is one of its codes), then the /48's (whose default
        // is the /40's rule).
        assert_eq!(table.settled(), 2);
        for (a, want) in [
            ("2001:db8:1ab:cd12::1", (fast::allow(4), 2)),
            ("2001:db8:1ab:ce00::1", (fast::allow(3), 2)),
            ("2001:db8:1ac::1", (fast::allow(2), 2)),
            ("2001:db8:1ff::1", (fast::allow(2), 2)),
            ("2001:db8:200::1", (fast::allow(1), 1)),
            ("2001:db9::1", (fast::DENY, 1)),
            ("2001:d00::1", (fast::DENY, 1)),
        ] {
            assert_eq!(table.walk(a), want, "{a}");
        }
    }

    #[test]
    fn compressed_paths_split_take_defaults_and_compress_again() {
        let one = set(&[("2001:db8:1:2::/64", 1)]);
        let two = set(&[("2001:db8:1:2::/64", 1), ("2001:db8:2::/48", 2)]);
        let covered = set(&[("2001:db8:1:2::/64", 1), ("2001::/16", 3)]);
        let mut table = Table::new(64);
        table.sync(&BTreeMap::new(), &one);
        assert_eq!(table.settled(), 1);

        // A prefix that branches off the compressed path at /40: a /40 chunk above a
        // new /56 one (the published one's slot changes), the old one freed.
        let report = table.sync(&one, &two);
        assert_eq!((report.chunks_filled, report.chunks_freed), (2, 1));
        assert_eq!(table.settled(), 2);
        for (a, want) in [
            ("2001:db8:1:2::1", (fast::allow(1), 2)),
            ("2001:db8:1:3::1", (fast::DENY, 2)),
            ("2001:db8:2:ffff::1", (fast::allow(2), 1)),
            ("2001:db8:3::1", (fast::DENY, 1)),
            ("2001:db9::1", (fast::DENY, 1)),
        ] {
            assert_eq!(table.walk(a), want, "{a}");
        }

        // Removed again: one chunk.
        table.sync(&two, &one);
        assert_eq!(table.settled(), 1);
        assert_eq!(table.walk("2001:db8:1:2::1"), (fast::allow(1), 1));
        assert_eq!(table.walk("2001:db8:2::1"), (fast::DENY, 1));

        // A covering /16: the same chunk, its default and codes changed in place.
        let report = table.sync(&one, &covered);
        assert_eq!((report.chunks_filled, report.chunks_freed), (0, 0));
        assert_eq!(table.settled(), 1);
        for (a, want) in [
            ("2001:db8:1:2::1", (fast::allow(1), 1)),
            ("2001:db8:1:3::1", (fast::allow(3), 1)),
            ("2001:db8:2::1", (fast::allow(3), 1)),
            ("2001:ffff::1", (fast::allow(3), 1)),
            ("2002::1", (fast::DENY, 0)),
        ] {
            assert_eq!(table.walk(a), want, "{a}");
        }
    }

    /// 10,000 random prefixes /32 to /64 in 2000::/3 (the benchmark's list): about
    /// one chunk each, and every one found in the root and at most three chunks
    /// (without path compression: four chunks each, up to six reads).
    #[test]
    fn sparse_prefixes_take_about_a_chunk_each() {
        let mut rng = Rng::new(0x5eed);
        let mut list = BTreeMap::new();
        while list.len() < 10_000 {
            let len = 32 + rng.below(33) as u8;
            let a = (u128::from(rng.next()) << 64 | u128::from(rng.next())) >> 3 | 1 << 125;
            list.insert(v6net(a & mask(len), len), rng.below(8) as u32);
        }
        let mut table = Table::new(fast::v6::CHUNKS - fast::v6::ROOT_CHUNKS);
        table.sync(&BTreeMap::new(), &list);
        let used = table.settled();
        assert!(used < list.len() * 3 / 2, "{used} chunks");
        let mut reads = [0; fast::v6::LEVELS + 1];
        for net in list.keys() {
            let IpNet::V6(n) = net else { continue };
            let a = u128::from(n.network()) | (u128::from(rng.next()) & !mask(n.prefix_len()));
            let (code, n) = table.with(|c| c.walk(a));
            assert_eq!(code, longest(&[&list], a), "{}", Ipv6Addr::from(a));
            reads[n] += 1;
        }
        eprintln!("{used} chunks; prefixes by chunks read: {reads:?}");
        assert!(reads[4..].iter().all(|n| *n == 0), "{reads:?}");
    }

    /// What a real list takes: AWS's `ipv6_prefixes`, from the copy of
    /// https://ip-ranges.amazonaws.com/ip-ranges.json kept beside the repository
    /// (`../shared/realdocs`, never copied into it; skipped where it is missing).
    #[test]
    fn a_real_list_fits_with_room_to_spare() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/realdocs/aws-ip-ranges.json");
        if !path.exists() {
            eprintln!("skipped: {} is missing", path.display());
            return;
        }
        // Read as the agent reads a source: its JSON parser, AWS's selector.
        let format = crate::sources::format::Format::Json(crate::sources::format::json::Selector {
            items: vec!["ipv6_prefixes".into()],
            cidr: vec!["ipv6_prefix".into()],
            filters: Vec::new(),
            serial: None,
        });
        let body = std::fs::read(&path).unwrap();
        let parsed = crate::sources::format::parse_document(&format, &body, "aws").unwrap();
        let list: BTreeMap<IpNet, u32> = parsed
            .entries
            .iter()
            .map(|e| (IpNet::V6(e.parse::<Ipv6Net>().unwrap().trunc()), 0))
            .collect();
        let mut table = Table::new(fast::v6::CHUNKS - fast::v6::ROOT_CHUNKS);
        let report = table.sync(&BTreeMap::new(), &list);
        let used = table.settled();
        // Without compression: a chunk per region /16 to /56 holding a longer prefix.
        let mut uncompressed = std::collections::BTreeSet::new();
        for net in list.keys() {
            let IpNet::V6(n) = net else { continue };
            let len = n.prefix_len();
            for region in (ROOT_LEN..fast::v6::MAX_LEN).step_by(STRIDE.into()) {
                if len > region {
                    uncompressed.insert((u128::from(n.network()) & mask(region), region));
                }
            }
        }
        eprintln!(
            "{} AWS IPv6 prefixes: {used} chunks in use, {} without path compression",
            list.len(),
            uncompressed.len()
        );
        assert_eq!(report.left_to_trie, 0);
        assert!(used <= uncompressed.len());
        let mut rng = Rng::new(0xa75);
        for net in list.keys() {
            let IpNet::V6(n) = net else { continue };
            if n.prefix_len() > fast::v6::MAX_LEN {
                continue;
            }
            let a = u128::from(n.network()) | (u128::from(rng.next()) & !mask(n.prefix_len()));
            assert_eq!(
                table.with(|c| c.lookup(a)),
                fast::allow(0),
                "{}",
                Ipv6Addr::from(a)
            );
        }
    }
}
