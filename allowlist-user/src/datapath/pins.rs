//! The layout of an agent's pins under its `pin_dir` on bpffs, checks that pinned
//! maps match this build, and removal.
//!
//! ```text
//! <pin_dir>/ALLOW_V4 ALLOW_V6 PORTS SETTINGS COUNTERS HITS FRAGS_V4 FRAGS_V6   maps
//!           FAST_V4 FAST_V4_GROUPS
//! <pin_dir>/link_<interface>                                                   XDP links
//! ```
//! bpffs is shared by the whole host: everything an agent touches is under its own
//! `pin_dir`, so agents (and tests) with different directories never meet.

use std::{
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

use allowlist_common::maps as names;
use aya::maps::MapInfo;

use super::DatapathError;

const BPF_FS_MAGIC: i64 = 0xCAFE_4A11;
const LINK_PREFIX: &str = "link_";

pub fn map_pin(pin_dir: &Path, map: &str) -> PathBuf {
    pin_dir.join(map)
}

pub fn link_pin(pin_dir: &Path, interface: &str) -> PathBuf {
    pin_dir.join(format!("{LINK_PREFIX}{interface}"))
}

/// Interfaces that have a pinned link under `pin_dir`.
pub fn pinned_links(pin_dir: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    match fs::read_dir(pin_dir) {
        Ok(entries) => {
            for entry in entries {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if let Some(ifname) = name.strip_prefix(LINK_PREFIX) {
                    out.push(ifname.to_owned());
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    out.sort();
    Ok(out)
}

/// Whether an agent has left its maps under `pin_dir`.
pub fn has_pinned_maps(pin_dir: &Path) -> bool {
    map_pin(pin_dir, names::ALLOW_V4).exists()
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Makes sure `pin_dir` exists on a bpffs, mounting bpffs at /sys/fs/bpf when the
/// host has not (as systemd normally does).
pub fn prepare_pin_dir(pin_dir: &Path) -> Result<(), DatapathError> {
    let bpffs_root = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(bpffs_root) && !is_bpffs(bpffs_root).unwrap_or(false) {
        mount_bpffs(bpffs_root)?;
    }
    fs::create_dir_all(pin_dir).map_err(|source| DatapathError::PinDir {
        path: pin_dir.to_owned(),
        source,
    })?;
    match is_bpffs(pin_dir) {
        Ok(true) => Ok(()),
        Ok(false) => Err(DatapathError::NotBpffs(pin_dir.to_owned())),
        Err(source) => Err(DatapathError::PinDir {
            path: pin_dir.to_owned(),
            source,
        }),
    }
}

fn mount_bpffs(target: &Path) -> Result<(), DatapathError> {
    let c_target = CString::new(target.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings; data may be null.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            c_target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(DatapathError::MountBpffs(io::Error::last_os_error()));
    }
    tracing::info!(path = %target.display(), "mounted bpffs");
    Ok(())
}

/// What this build's object file declares for a map.
pub struct ExpectedMap {
    pub name: String,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// Refuses pinned maps that another build of the program left with a different
/// layout: the program would misread them.
pub fn check_compatible(pin_dir: &Path, expected: &[ExpectedMap]) -> Result<(), DatapathError> {
    for want in expected {
        let path = map_pin(pin_dir, &want.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| DatapathError::OpenPin {
            path: path.clone(),
            source,
        })?;
        let map_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
        let found = (
            map_type,
            info.key_size(),
            info.value_size(),
            info.max_entries(),
        );
        let wanted = (
            want.map_type,
            want.key_size,
            want.value_size,
            want.max_entries,
        );
        if found != wanted {
            return Err(DatapathError::IncompatiblePin {
                path,
                found: format!(
                    "type {} key {} value {} entries {}",
                    found.0, found.1, found.2, found.3
                ),
                wanted: format!(
                    "type {} key {} value {} entries {}",
                    wanted.0, wanted.1, wanted.2, wanted.3
                ),
            });
        }
    }
    Ok(())
}

/// Removes every pin under `pin_dir` and the directory. Unpinning a link detaches
/// the program from that interface once no process holds the link any more.
pub fn remove_all(pin_dir: &Path) -> Result<Vec<PathBuf>, DatapathError> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(pin_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(source) => {
            return Err(DatapathError::PinDir {
                path: pin_dir.to_owned(),
                source,
            });
        }
    };
    // Links first, so the program stops running before its maps go.
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(LINK_PREFIX))
    });
    for path in paths {
        fs::remove_file(&path).map_err(|source| DatapathError::PinDir {
            path: path.clone(),
            source,
        })?;
        removed.push(path);
    }
    fs::remove_dir(pin_dir).map_err(|source| DatapathError::PinDir {
        path: pin_dir.to_owned(),
        source,
    })?;
    Ok(removed)
}
