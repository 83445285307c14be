//! The layout of an agent's pins under its `pin_dir` on bpffs, checks that pinned
//! maps match this build, and removal.
//!
//! ```text
//! <pin_dir>/ALLOW_V4 ALLOW_V6 PORTS SETTINGS COUNTERS HITS FRAGS_V4 FRAGS_V6   maps
//!           FAST_V4 FAST_V4_CHUNKS FAST_V6
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

pub(crate) fn map_pin(pin_dir: &Path, map: &str) -> PathBuf {
    pin_dir.join(map)
}

pub(crate) fn link_pin(pin_dir: &Path, interface: &str) -> PathBuf {
    pin_dir.join(format!("{LINK_PREFIX}{interface}"))
}

/// Interfaces that have a pinned link under `pin_dir`.
pub(crate) fn pinned_links(pin_dir: &Path) -> io::Result<Vec<String>> {
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
pub(crate) fn has_pinned_maps(pin_dir: &Path) -> bool {
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

/// The nearest existing directory at or above `path`.
fn existing_ancestor(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| p.is_dir())
}

/// Whether `path` (or, while it does not exist yet, the directory it would be made
/// in) is on a bpffs.
fn on_bpffs(path: &Path) -> bool {
    existing_ancestor(path).is_some_and(|p| is_bpffs(p).unwrap_or(false))
}

fn mount_namespace(pid: &str) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

fn parent_pid(pid: &str) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1).map(str::to_owned)
}

/// Whether a bpffs mounted by this process outlives it: when it shares PID 1's
/// mount namespace, or (PID 1's being out of reach, as in some sandboxes) its
/// parent's.
fn mounts_are_durable() -> bool {
    let own = mount_namespace("self");
    match mount_namespace("1") {
        Some(init) => own == Some(init),
        None => parent_pid("self")
            .and_then(|ppid| mount_namespace(&ppid))
            .is_some_and(|parent| own == Some(parent)),
    }
}

/// Processes whose view of the filesystem may hold the host's bpffs: PID 1, then
/// this process's ancestors, nearest first.
fn host_candidates() -> Vec<String> {
    let mut out = vec!["1".to_owned()];
    let mut pid = "self".to_owned();
    while let Some(ppid) = parent_pid(&pid) {
        if ppid == "0" || ppid == "1" || out.contains(&ppid) {
            break;
        }
        out.push(ppid.clone());
        pid = ppid;
    }
    out
}

/// Keeps a directory reachable for the life of the process: `/proc/self/fd/<n>`
/// stays valid after the process whose root led to it has exited.
fn anchor(dir: &Path) -> Option<PathBuf> {
    use std::os::fd::IntoRawFd as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    static ANCHORS: std::sync::Mutex<Vec<(PathBuf, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut anchors = ANCHORS.lock().ok()?;
    if let Some((_, path)) = anchors.iter().find(|(d, _)| d == dir) {
        return Some(path.clone());
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .ok()?;
    // Deliberately never closed: the path below refers to it.
    let fd = file.into_raw_fd();
    let path = PathBuf::from(format!("/proc/self/fd/{fd}"));
    anchors.push((dir.to_owned(), path.clone()));
    Some(path)
}

/// Where the pins of `pin_dir` live, and whether they outlive the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PinLocation {
    /// The path to use: `pin_dir` itself, or, when this process runs in a private
    /// mount namespace (`ip netns exec` remounts /sys, hiding the host's bpffs), the
    /// host's bpffs reached through PID 1's (or an ancestor's) root.
    pub path: PathBuf,
    /// The pins are on a bpffs that only this process's mount namespace has: they
    /// vanish, and the filter detaches, when the agent exits.
    pub ephemeral: bool,
}

/// Finds the bpffs that `pin_dir` must be on for the filter to outlive the agent:
/// the one at `pin_dir` if there is one; else, from a private mount namespace, the
/// one at `pin_dir` in the mount namespace of PID 1 or of the nearest ancestor
/// process that has one. `None` when none has: the caller mounts one (durable only
/// outside a private mount namespace) or refuses.
pub(crate) fn locate(pin_dir: &Path) -> Option<PinLocation> {
    if on_bpffs(pin_dir) {
        return Some(PinLocation {
            path: pin_dir.to_owned(),
            ephemeral: false,
        });
    }
    let own = mount_namespace("self")?;
    let relative = pin_dir.strip_prefix("/").ok()?;
    for pid in host_candidates() {
        if mount_namespace(&pid).is_none_or(|ns| ns == own) {
            continue;
        }
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let host = root.join(relative);
        let Some(existing) = host
            .ancestors()
            .take_while(|p| *p != root)
            .find(|p| p.is_dir())
        else {
            continue;
        };
        if !is_bpffs(existing).unwrap_or(false) {
            continue;
        }
        let rest = host.strip_prefix(existing).ok()?;
        let anchored = anchor(existing)?;
        tracing::debug!(pid, bpffs = %existing.display(), "found the host's bpffs from a private mount namespace");
        return Some(PinLocation {
            path: anchored.join(rest),
            ephemeral: false,
        });
    }
    None
}

/// Makes sure `pin_dir` exists on a bpffs where its pins outlive the agent, with
/// nobody else in control of it, and returns where it is (see [`locate`]). Mounts
/// bpffs at /sys/fs/bpf (mode 0700) when the host has none and this process is in
/// PID 1's mount namespace. From a private mount namespace with no host bpffs in
/// sight, a bpffs mounted here would die with the agent: refused unless
/// `allow_ephemeral`.
pub(crate) fn prepare_pin_dir(
    pin_dir: &Path,
    allow_ephemeral: bool,
) -> Result<PinLocation, DatapathError> {
    let bpffs_root = Path::new("/sys/fs/bpf");
    let location = match locate(pin_dir) {
        Some(location) => location,
        None if !pin_dir.starts_with(bpffs_root) => {
            return Err(DatapathError::NotBpffs(pin_dir.to_owned()));
        }
        None => {
            let durable = mounts_are_durable();
            if !durable && !allow_ephemeral {
                return Err(DatapathError::PrivateMountNamespace(pin_dir.to_owned()));
            }
            mount_bpffs(bpffs_root)?;
            PinLocation {
                path: pin_dir.to_owned(),
                ephemeral: !durable,
            }
        }
    };
    create_private_dir(&location.path)?;
    check_ownership(&location.path)?;
    Ok(location)
}

/// Creates `dir` and its missing parents, each 0700 whatever the umask.
fn create_private_dir(dir: &Path) -> Result<(), DatapathError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let missing: Vec<&Path> = dir.ancestors().take_while(|p| !p.exists()).collect();
    for path in missing.into_iter().rev() {
        let made = fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o700)));
        match made {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(DatapathError::PinDir {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    if !is_bpffs(dir).unwrap_or(false) {
        return Err(DatapathError::NotBpffs(dir.to_owned()));
    }
    Ok(())
}

/// Refuses a pin directory that someone other than this user controls: `dir` and
/// every directory above it on the same bpffs must be owned by this user and
/// writable by no one else (the bpffs root may be world-writable with the sticky
/// bit, as a bpffs mounted without `mode=` is). Whoever controls the directory can
/// unpin the links, and the filter detaches.
pub(super) fn check_ownership(dir: &Path) -> Result<(), DatapathError> {
    use std::os::unix::fs::MetadataExt as _;
    let euid = crate::store::euid();
    for path in dir.ancestors() {
        if !is_bpffs(path).unwrap_or(false) {
            break;
        }
        let is_root = path
            .parent()
            .is_none_or(|parent| !is_bpffs(parent).unwrap_or(false));
        // A mount point is never a symlink (and /proc/self/fd/<n> must be followed);
        // below it, a symlink is judged as itself.
        let meta = if is_root {
            fs::metadata(path)
        } else {
            fs::symlink_metadata(path)
        }
        .map_err(|source| DatapathError::PinDir {
            path: path.to_owned(),
            source,
        })?;
        let mode = meta.mode() & 0o7777;
        let problem = if !meta.is_dir() {
            Some("is not a directory".to_owned())
        } else if meta.uid() != euid && !(is_root && meta.uid() == 0) {
            Some(format!(
                "is owned by uid {}, not by this agent's uid {euid}",
                meta.uid()
            ))
        } else if mode & 0o022 != 0 && !(is_root && mode & 0o1000 != 0) {
            Some(format!(
                "is writable by {} (mode {mode:04o})",
                if mode & 0o002 != 0 {
                    "others"
                } else {
                    "its group"
                }
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(DatapathError::UnsafePinDir {
                path: path.to_owned(),
                problem,
            });
        }
        if is_root {
            break;
        }
    }
    Ok(())
}

fn mount_bpffs(target: &Path) -> Result<(), DatapathError> {
    let c_target = CString::new(target.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    let fstype = c"bpf";
    // Only root may create pins at the top: the default (1777) lets any user make
    // the agent's directory first.
    let data = c"mode=0700";
    // SAFETY: all pointers are valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            c_target.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(DatapathError::MountBpffs(io::Error::last_os_error()));
    }
    tracing::info!(path = %target.display(), "mounted bpffs (mode 0700)");
    Ok(())
}

/// What this build's object file declares for a map.
pub(super) struct ExpectedMap {
    pub name: String,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// Makes the pinned maps fit this build: refuses a pinned map that another build
/// left with a different layout (the program would misread it), except a map the
/// agent derives (`maps::DERIVED`), whose pin is removed so that the load creates it
/// anew and the first sync rebuilds it from the tries; removes the pins of maps this
/// build no longer has. A previous program still attached keeps the maps it holds
/// until its link gets this program.
pub(super) fn check_compatible(
    pin_dir: &Path,
    expected: &[ExpectedMap],
) -> Result<(), DatapathError> {
    // Everything is checked before any pin is removed: a refused start changes nothing.
    let mut replaced = Vec::new();
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
        if found == wanted {
            continue;
        }
        if !names::DERIVED.contains(&want.name.as_str()) {
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
        replaced.push(path);
    }
    for name in names::RETIRED {
        remove_pin(
            &map_pin(pin_dir, name),
            "removing the pin of a map this build no longer has",
        )?;
    }
    for path in replaced {
        remove_pin(
            &path,
            "replacing a pinned map that another build left with another layout: it is rebuilt from the tries",
        )?;
    }
    Ok(())
}

/// Removes the pin of a map at `path`, if there is one, saying `what` in the log.
fn remove_pin(path: &Path, what: &str) -> Result<(), DatapathError> {
    match fs::remove_file(path) {
        Ok(()) => {
            tracing::warn!(pin = %path.display(), "{what}");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DatapathError::PinDir {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Removes every pin under `pin_dir` and the directory. Unpinning a link detaches
/// the program from that interface once no process holds the link any more.
pub(crate) fn remove_all(pin_dir: &Path) -> Result<Vec<PathBuf>, DatapathError> {
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
