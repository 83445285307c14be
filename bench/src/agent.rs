//! The resident memory of the real agent (`allowlist run`) holding a large list, in a
//! throwaway network namespace with a veth pair.
//!
//! The namespace, the veth (deleted with it), the pins under
//! /sys/fs/bpf/allowlist-bench-<id> and the temporary directory are removed on drop,
//! also when a step fails.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use allowlist_tests::netns::{Netns, unique_id};
use anyhow::{Context as _, Result, bail};

pub(crate) struct Memory {
    pub prefixes: u64,
    /// /proc/<pid>/status fields, in kB.
    pub vm_rss: u64,
    pub rss_anon: u64,
    pub rss_file: u64,
    pub vm_hwm: u64,
    pub startup: Duration,
}

struct Run {
    child: Option<Child>,
    pin_dir: PathBuf,
    // Dropped after the agent: its interface goes with the namespace.
    _netns: Netns,
    _dir: tempfile::TempDir,
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// Starts `agent` with a `file` source holding `document` (one prefix a line), waits
/// until its maps hold the list, and reads its memory.
pub(crate) fn resident_memory(agent: &Path, document: &str) -> Result<Memory> {
    let id = unique_id();
    let netns = Netns::new(&format!("{id}-bench"));
    let (outer, inner) = (format!("{id}a"), format!("{id}b"));
    netns.ip(&[
        "link", "add", &outer, "type", "veth", "peer", "name", &inner,
    ]);
    netns.ip(&["link", "set", &outer, "up"]);
    netns.ip(&["link", "set", &inner, "up"]);
    let dir = tempfile::tempdir()?;
    let list = dir.path().join("prefixes.txt");
    std::fs::write(&list, document)?;
    let state = dir.path().join("state");
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/allowlist-bench-{id}"));
    let config = dir.path().join("allowlist.toml");
    std::fs::write(
        &config,
        format!(
            "interfaces = [\"{outer}\"]\nports = [443]\nrefresh = \"1h\"\nstate_dir = \"{}\"\npin_dir = \"{}\"\n\n[[provider]]\nname = \"bench\"\n[[provider.source]]\nfile = \"{}\"\nformat = \"text\"\n",
            state.display(),
            pin_dir.display(),
            list.display()
        ),
    )?;
    let log = dir.path().join("agent.log");
    let mut run = Run {
        child: None,
        pin_dir,
        _netns: netns,
        _dir: dir,
    };
    let started = Instant::now();
    let child = run
        ._netns
        .command(agent)
        .args(["run", "--detach-on-exit", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("start {}", agent.display()))?;
    let pid = child.id();
    run.child = Some(child);

    // Loaded: the status file names this agent, a refresh has run, the maps hold it.
    let status_path = state.join("status.json");
    let prefixes = loop {
        let status = std::fs::read_to_string(&status_path)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
        if let Some(status) = status
            && status["pid"].as_u64() == Some(u64::from(pid))
            && status["refresh_results"]
                .as_object()
                .is_some_and(|r| !r.is_empty())
            && let Some(n) = status["map_entries_v4"].as_u64().filter(|n| *n > 0)
        {
            break n;
        }
        if let Some(child) = run.child.as_mut()
            && let Some(exit) = child.try_wait()?
        {
            bail!(
                "the agent exited ({exit}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        crate::check_interrupted()?;
        if started.elapsed() > Duration::from_secs(120) {
            bail!(
                "the agent did not load the list within 120 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let startup = started.elapsed();
    // Let start-up allocations settle (the refresh task, the status writer).
    std::thread::sleep(Duration::from_secs(1));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{name} in /proc/{pid}/status"))
    };
    let memory = Memory {
        prefixes,
        vm_rss: field("VmRSS:")?,
        rss_anon: field("RssAnon:")?,
        rss_file: field("RssFile:")?,
        vm_hwm: field("VmHWM:")?,
        startup,
    };
    drop(run);
    Ok(memory)
}
