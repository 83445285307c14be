//! The XDP program and its maps: loading, attaching, pinning and syncing.

mod maps;

use std::path::PathBuf;

use aya::{
    Ebpf, EbpfLoader,
    maps::MapError,
    programs::{ProgramError, Xdp},
};
use thiserror::Error;

pub use maps::{Counters, Maps};

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
    #[error("map {0} holds a key that is not a valid prefix")]
    CorruptKey(&'static str),
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

fn loader(options: &LoadOptions) -> EbpfLoader<'static> {
    // The loader borrows the values of the globals it patches.
    static DEBUG: [u32; 2] = [0, 1];
    // aya-log's level filter: 0 keeps every log statement off.
    static LOG_LEVEL: [u8; 2] = [0, 0xff];
    let on = usize::from(options.debug_events);
    let mut loader = EbpfLoader::new();
    loader
        .override_global("DEBUG_EVENTS", &DEBUG[on], true)
        .override_global(aya_log::LEVEL, &LOG_LEVEL[on], false);
    loader
}

fn load_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
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
