//! One agent per state and pin directory, and how the CLI finds and signals it.
//!
//! The running agent holds an exclusive `flock` on `<state_dir>/allowlist.pid` (which
//! carries its pid) and on its `pin_dir`. A lock dies with its process, so a pid file
//! left by a killed agent is recognisably stale.
//!
//! The pid file is opened without following a symlink, created 0600, and must be the
//! agent's own: otherwise a link planted there would have the agent (root) truncate
//! and overwrite whatever it points to.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use thiserror::Error;

use crate::store::{PID_FILE, euid};

#[derive(Debug, Error)]
pub(crate) enum ControlError {
    /// `pid` is `None` when the holder is unknown (the `pin_dir` lock carries no pid).
    #[error("another agent ({}) holds the lock on {}", describe_pid(*pid), path.display())]
    AlreadyRunning { pid: Option<i32>, path: PathBuf },
    #[error("refusing the pid file {}: {reason}", path.display())]
    UnsafePidFile { path: PathBuf, reason: String },
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no agent is running with state_dir {}", .0.display())]
    NotRunning(PathBuf),
    #[error(
        "an agent holds the lock on {}, but it is not a process of this PID namespace (its pid file says {}, which here is {}): it runs in another container or PID namespace; signal or stop it there",
        state_dir.display(),
        describe_pid(*pid_file_says),
        if *pid_file_says == Some(1) { "this namespace's init" } else { "another process or none" }
    )]
    RunningElsewhere {
        state_dir: PathBuf,
        pid_file_says: Option<i32>,
    },
    #[error("cannot signal pid {pid}")]
    Signal {
        pid: i32,
        #[source]
        source: io::Error,
    },
}

/// Held by the running agent; released (and the pid file removed) on drop.
#[derive(Debug)]
pub(crate) struct AgentLock {
    pid_file: File,
    pid_path: PathBuf,
    _pin_dir: File,
}

fn describe_pid(pid: Option<i32>) -> String {
    pid.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"))
}

/// Opens (creating, 0600) the pid file without following a symlink, and checks what
/// was opened: a regular file owned by this process's user.
fn open_pid_file(path: &Path) -> Result<File, ControlError> {
    let unsafe_file = |reason: String| ControlError::UnsafePidFile {
        path: path.to_owned(),
        reason,
    };
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(file) => file,
        Err(err)
            if err.raw_os_error() == Some(libc::ELOOP)
                && fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) =>
        {
            let target = fs::read_link(path)
                .map(|t| format!(" (to {})", t.display()))
                .unwrap_or_default();
            return Err(unsafe_file(format!(
                "it is a symbolic link{target}, which the agent would write through; remove it"
            )));
        }
        Err(source) => return Err(io_err(path)(source)),
    };
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(unsafe_file(
            "it is not a regular file; remove it".to_owned(),
        ));
    }
    if meta.uid() != euid() {
        return Err(unsafe_file(format!(
            "it is owned by uid {}, not by uid {} (the agent's user); remove it",
            meta.uid(),
            euid()
        )));
    }
    // A pid file left by an older agent may be 0644.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_err(path))?;
    Ok(file)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ControlError + '_ {
    move |source| ControlError::Io {
        path: path.to_owned(),
        source,
    }
}

fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: the descriptor is valid for the lifetime of `file`.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

fn read_pid(file: &mut File) -> Option<i32> {
    let mut s = String::new();
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// Takes the agent locks; fails if another agent holds either.
pub(crate) fn acquire(state_dir: &Path, pin_dir: &Path) -> Result<AgentLock, ControlError> {
    let pid_path = state_dir.join(PID_FILE);
    let mut pid_file = open_pid_file(&pid_path)?;
    if !try_lock(&pid_file).map_err(io_err(&pid_path))? {
        return Err(ControlError::AlreadyRunning {
            pid: read_pid(&mut pid_file),
            path: state_dir.to_owned(),
        });
    }
    let pin_dir_file = File::open(pin_dir).map_err(io_err(pin_dir))?;
    if !try_lock(&pin_dir_file).map_err(io_err(pin_dir))? {
        return Err(ControlError::AlreadyRunning {
            pid: None,
            path: pin_dir.to_owned(),
        });
    }
    pid_file.set_len(0).map_err(io_err(&pid_path))?;
    writeln!(pid_file, "{}", std::process::id()).map_err(io_err(&pid_path))?;
    pid_file.sync_all().map_err(io_err(&pid_path))?;
    Ok(AgentLock {
        pid_file,
        pid_path,
        _pin_dir: pin_dir_file,
    })
}

impl Drop for AgentLock {
    fn drop(&mut self) {
        let _ = self.pid_file.set_len(0);
        let _ = fs::remove_file(&self.pid_path);
    }
}

/// Who holds the agent lock of a `state_dir`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockHolder {
    /// Nobody: no agent runs (a pid file left behind is stale).
    Nobody,
    /// The agent, a process of this PID namespace.
    Agent(i32),
    /// A process this PID namespace cannot see (the agent in another container, say):
    /// the pid in its file means nothing here, and must never be signalled.
    Elsewhere { pid_file_says: Option<i32> },
}

/// Who holds the lock on `state_dir`'s pid file. The pid in the file is believed
/// only if that process (in this PID namespace) has the very file open: a pid from
/// another PID namespace names another process here. A pid file that is a symlink,
/// or that neither root nor this user owns, names no agent.
pub(crate) fn lock_holder(state_dir: &Path) -> LockHolder {
    let path = state_dir.join(PID_FILE);
    let Ok(mut file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    else {
        return LockHolder::Nobody;
    };
    let Ok(meta) = file.metadata() else {
        return LockHolder::Nobody;
    };
    if !meta.is_file() || (meta.uid() != 0 && meta.uid() != euid()) {
        return LockHolder::Nobody;
    }
    // If we can take the lock, nobody holds it: the pid file is stale.
    if try_lock(&file).unwrap_or(false) {
        return LockHolder::Nobody;
    }
    let pid = read_pid(&mut file).filter(|pid| *pid > 0);
    match pid {
        Some(pid) if has_open(pid, &meta) => LockHolder::Agent(pid),
        _ => LockHolder::Elsewhere { pid_file_says: pid },
    }
}

/// Whether process `pid` has the file `file` (by device and inode) open.
fn has_open(pid: i32, file: &fs::Metadata) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::metadata(fd.path()).is_ok_and(|m| m.dev() == file.dev() && m.ino() == file.ino())
    })
}

pub(crate) fn signal(pid: i32, signal: libc::c_int) -> Result<(), ControlError> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(ControlError::Signal {
            pid,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Signals the running agent; an error when none runs.
pub(crate) fn signal_agent(state_dir: &Path, sig: libc::c_int) -> Result<i32, ControlError> {
    match lock_holder(state_dir) {
        LockHolder::Agent(pid) => {
            signal(pid, sig)?;
            Ok(pid)
        }
        LockHolder::Nobody => Err(ControlError::NotRunning(state_dir.to_owned())),
        LockHolder::Elsewhere { pid_file_says } => Err(ControlError::RunningElsewhere {
            state_dir: state_dir.to_owned(),
            pid_file_says,
        }),
    }
}

/// Waits until the agent with `state_dir` has exited (its lock released).
pub(crate) fn wait_for_exit(state_dir: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if lock_holder(state_dir) == LockHolder::Nobody {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Whether `cap` is in this process's effective set.
fn has_capability(cap: u32) -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    eff & (1u64 << cap) != 0
}

/// Whether this process may use bpf() on pinned objects: CAP_BPF or CAP_SYS_ADMIN.
pub(crate) fn can_use_bpf() -> bool {
    has_capability(CAP_BPF) || has_capability(CAP_SYS_ADMIN)
}

/// Whether this process may load XDP programs: root, or CAP_BPF (or CAP_SYS_ADMIN)
/// together with CAP_NET_ADMIN in the effective set.
pub(crate) fn check_privileges() -> Result<(), String> {
    if has_capability(CAP_NET_ADMIN) && can_use_bpf() {
        Ok(())
    } else {
        Err("loading and attaching XDP needs root, or the capabilities CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (run with sudo, or under the systemd unit)".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::*;

    struct Dirs {
        _tmp: tempfile::TempDir,
        state: PathBuf,
        pins: PathBuf,
    }

    fn dirs() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let pins = tmp.path().join("pins");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
        fs::create_dir(&pins).unwrap();
        Dirs {
            _tmp: tmp,
            state,
            pins,
        }
    }

    #[test]
    fn the_pid_file_is_private_and_carries_the_pid() {
        let d = dirs();
        let lock = acquire(&d.state, &d.pins).unwrap();
        let path = d.state.join(PID_FILE);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            fs::read_to_string(&path).unwrap().trim(),
            std::process::id().to_string()
        );
        drop(lock);
        assert!(!path.exists());
    }

    #[test]
    fn a_symlinked_pid_file_is_refused_and_its_target_untouched() {
        let d = dirs();
        let target = d.state.parent().unwrap().join("precious");
        fs::write(&target, "precious contents\n").unwrap();
        let path = d.state.join(PID_FILE);
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let err = acquire(&d.state, &d.pins).expect_err("a symlinked pid file must be refused");
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains("symbolic link"),
            "{text}"
        );
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious contents\n");
        assert!(fs::symlink_metadata(&path).unwrap().is_symlink());
        // Nor does the CLI read a pid to signal through it.
        assert_eq!(lock_holder(&d.state), LockHolder::Nobody);
    }

    #[test]
    fn a_pid_file_owned_by_another_user_is_refused() {
        if euid() != 0 {
            eprintln!("SKIPPED: giving a file to another user needs root");
            return;
        }
        let d = dirs();
        let path = d.state.join(PID_FILE);
        fs::write(&path, "1\n").unwrap();
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let err = acquire(&d.state, &d.pins).expect_err("a pid file owned by another user");
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains("uid 65534"),
            "{text}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "1\n");
        assert_eq!(fs::metadata(&path).unwrap().uid(), 65534);
    }

    #[test]
    fn a_lock_holder_of_unknown_pid_is_not_called_pid_0() {
        let first = dirs();
        let _lock = acquire(&first.state, &first.pins).unwrap();
        // Another state_dir, the same pin_dir: the pin_dir lock's holder has no pid file.
        let second = dirs();
        let err = acquire(&second.state, &first.pins).expect_err("the pin_dir is locked");
        let text = err.to_string();
        assert!(!text.contains("pid 0"), "{text}");
        assert!(
            text.contains("pid unknown") && text.contains(&first.pins.display().to_string()),
            "{text}"
        );
        // The same state_dir: its pid file names the holder.
        let err = acquire(&first.state, &second.pins).expect_err("the state_dir is locked");
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
    }
}
