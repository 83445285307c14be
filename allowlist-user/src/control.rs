//! One agent per state and pin directory, and how the CLI finds and signals it.
//!
//! The running agent holds an exclusive `flock` on `<state_dir>/allowlist.pid` (which
//! carries its pid) and on its `pin_dir`. A lock dies with its process, so a pid file
//! left by a killed agent is recognisably stale.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use thiserror::Error;

const PID_FILE: &str = "allowlist.pid";

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("another agent (pid {pid}) is running with {}", path.display())]
    AlreadyRunning { pid: i32, path: PathBuf },
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no agent is running with state_dir {}", .0.display())]
    NotRunning(PathBuf),
    #[error("cannot signal pid {pid}")]
    Signal {
        pid: i32,
        #[source]
        source: io::Error,
    },
}

/// Held by the running agent; released (and the pid file removed) on drop.
#[derive(Debug)]
pub struct AgentLock {
    pid_file: File,
    pid_path: PathBuf,
    _pin_dir: File,
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
pub fn acquire(state_dir: &Path, pin_dir: &Path) -> Result<AgentLock, ControlError> {
    let pid_path = state_dir.join(PID_FILE);
    let mut pid_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&pid_path)
        .map_err(io_err(&pid_path))?;
    if !try_lock(&pid_file).map_err(io_err(&pid_path))? {
        let pid = read_pid(&mut pid_file).unwrap_or(0);
        return Err(ControlError::AlreadyRunning {
            pid,
            path: state_dir.to_owned(),
        });
    }
    let pin_dir_file = File::open(pin_dir).map_err(io_err(pin_dir))?;
    if !try_lock(&pin_dir_file).map_err(io_err(pin_dir))? {
        return Err(ControlError::AlreadyRunning {
            pid: 0,
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

/// The pid of the agent running with `state_dir`, if one is.
pub fn running_agent(state_dir: &Path) -> Option<i32> {
    let path = state_dir.join(PID_FILE);
    let mut file = File::open(&path).ok()?;
    // If we can take the lock, nobody holds it: the pid file is stale.
    if try_lock(&file).unwrap_or(false) {
        return None;
    }
    read_pid(&mut file).filter(|pid| *pid > 0)
}

pub fn signal(pid: i32, signal: libc::c_int) -> Result<(), ControlError> {
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
pub fn signal_agent(state_dir: &Path, sig: libc::c_int) -> Result<i32, ControlError> {
    let pid =
        running_agent(state_dir).ok_or_else(|| ControlError::NotRunning(state_dir.to_owned()))?;
    signal(pid, sig)?;
    Ok(pid)
}

/// Waits until the agent with `state_dir` has exited (its lock released).
pub fn wait_for_exit(state_dir: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if running_agent(state_dir).is_none() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Whether this process may load XDP programs: root, or CAP_BPF (or CAP_SYS_ADMIN)
/// together with CAP_NET_ADMIN in the effective set.
pub fn check_privileges() -> Result<(), String> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    if has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN)) {
        Ok(())
    } else {
        Err("loading and attaching XDP needs root, or the capabilities CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (run with sudo, or under the systemd unit)".to_owned())
    }
}
