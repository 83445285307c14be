//! The XDP program and its maps: loading, attaching, pinning and syncing.

mod fast;
mod fast6;
mod filter;
mod link;
mod mapping;
mod maps;
mod pins;
mod pool;
pub(crate) mod sync;
mod watch;

use std::path::PathBuf;

use aya::{
    Ebpf, EbpfLoader,
    maps::MapError,
    programs::{ProgramError, Xdp},
};
use thiserror::Error;

use crate::config::{AttachMode, Interface};

pub(crate) use filter::{Filter, InterfaceState, check_interfaces};
pub(crate) use link::read as read_link;
pub use maps::{Counters, Maps};
pub(crate) use pins::{
    PinLocation, has_pinned_maps, link_pin, locate as locate_pins, pinned_links, prepare_pin_dir,
    remove_all as remove_pins,
};
pub use sync::SyncReport;
pub use watch::DeniedEntry;

/// The compiled XDP program, built by build.rs from the `allowlist-ebpf` crate.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/allowlist"));

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error("this binary was built with AYA_BUILD_SKIP=1 and carries no XDP program")]
    NotEmbedded,
    #[error("loading the XDP object failed")]
    Load(#[source] aya::EbpfError),
    #[error("the XDP object has no program named {0}")]
    MissingProgram(&'static str),
    #[error("the kernel refused the XDP program")]
    Program(#[source] ProgramError),
    #[error("the XDP object has no map named {0}")]
    MissingMap(String),
    #[error("map {name}")]
    Map {
        name: String,
        #[source]
        source: MapError,
    },
    #[error("cannot open the pinned map {}", path.display())]
    OpenPin {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("cannot map the fast table {name} into memory")]
    MapFastTable {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("map {0} holds a key that is not a valid prefix")]
    CorruptKey(&'static str),
    #[error("cannot parse the embedded XDP object: {0}")]
    Parse(String),
    #[error("interface {name:?} does not exist (interfaces here: {available})")]
    MissingInterface { name: String, available: String },
    #[error("cannot attach XDP to {interface} in {mode} mode: {detail}")]
    AttachMode {
        interface: String,
        mode: AttachMode,
        detail: String,
    },
    #[error("cannot filter {interface}: {reason}")]
    Attach { interface: String, reason: String },
    #[error(
        "the kernel gave no BPF link for {0}; this kernel is too old to keep XDP attached across agent restarts (5.9 or later is needed)"
    )]
    NoLinkSupport(String),
    #[error("cannot pin the XDP link at {}", path.display())]
    PinLink {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("cannot open the pinned link {}: {reason}", path.display())]
    OpenLink { path: PathBuf, reason: String },
    #[error("{}", path.display())]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pin_dir {} is not on a bpffs mount (mount one with `mount -t bpf bpf /sys/fs/bpf`)", .0.display())]
    NotBpffs(PathBuf),
    #[error(
        "pin_dir {} would be on a bpffs that only this process's mount namespace has (under `ip netns exec`, or with no bpffs mounted on the host, and /proc/1/root out of reach): the filter would detach when the agent exits. Mount bpffs on the host (`mount -t bpf -o mode=0700 bpf /sys/fs/bpf`), run the agent in the host's mount namespace (for a network namespace: `nsenter --net=/run/netns/<name> allowlist run`, not `ip netns exec`), or pass --ephemeral-filter to accept a filter that lives only as long as the agent",
        .0.display()
    )]
    PrivateMountNamespace(PathBuf),
    #[error("refusing pin_dir: {dir} {problem}; whoever controls it can unpin the filter's links. Fix it with `chown root:root {dir} && chmod 0700 {dir}`, or remove it and let the agent create it", dir = path.display())]
    UnsafePinDir { path: PathBuf, problem: String },
    #[error("cannot mount bpffs at /sys/fs/bpf")]
    MountBpffs(#[source] std::io::Error),
    #[error("the pinned map {} was left by another build of allowlist ({found}; this build expects {wanted}); remove the old filter with `allowlist detach` (same --config) and start again", path.display())]
    IncompatiblePin {
        path: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("map {map} would need {needed} entries during the update but holds at most {capacity}")]
    Capacity {
        map: &'static str,
        needed: usize,
        capacity: usize,
    },
}

/// The embedded object file.
pub fn program_object() -> Result<&'static [u8], DatapathError> {
    if PROGRAM.is_empty() {
        return Err(DatapathError::NotEmbedded);
    }
    Ok(PROGRAM)
}

/// How to load the program.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Emit an aya-log event for every drop (off the fast path when false).
    pub debug_events: bool,
    /// Leave the denied-source watch out of the program (the verifier removes its
    /// code), to measure what it costs; the agent never sets it.
    pub without_watch: bool,
}

/// Loads the program into the kernel with fresh, unpinned maps (verdict tests and
/// benchmarks); the agent's loader adds pinning and attaching on top.
pub fn load_unpinned(options: &LoadOptions) -> Result<(Ebpf, Maps), DatapathError> {
    let mut ebpf = loader(options)
        .load(program_object()?)
        .map_err(DatapathError::Load)?;
    load_program(&mut ebpf)?;
    let maps = Maps::take_from(&mut ebpf)?;
    Ok((ebpf, maps))
}

pub(crate) fn loader(options: &LoadOptions) -> EbpfLoader<'static> {
    // The loader borrows the values of the globals it patches.
    static DEBUG: [u32; 2] = [0, 1];
    // aya-log's level filter: 0 keeps every log statement off.
    static LOG_LEVEL: [u8; 2] = [0, 0xff];
    static WATCH: [u32; 2] = [0, 1];
    let on = usize::from(options.debug_events);
    let mut loader = EbpfLoader::new();
    loader
        .override_global("DEBUG_EVENTS", &DEBUG[on], true)
        .override_global(aya_log::LEVEL, &LOG_LEVEL[on], false)
        .override_global("WATCH", &WATCH[usize::from(!options.without_watch)], true);
    loader
}

pub(crate) fn load_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
    let program: &mut Xdp = ebpf
        .program_mut(allowlist_common::PROGRAM_NAME)
        .ok_or(DatapathError::MissingProgram(
            allowlist_common::PROGRAM_NAME,
        ))?
        .try_into()
        .map_err(DatapathError::Program)?;
    program.load().map_err(DatapathError::Program)?;
    Ok(program)
}
