//! `state_dir`: what the agent keeps between runs, and the trust it asks of every
//! file there.
//!
//! The files, all written by the agent (0600 in a 0700 directory) and replaced
//! atomically unless said otherwise:
//! - `source-<id>.json`: a source's last good list ([`SavedList`], [`StateStore`]);
//! - `history.jsonl` (appended, rotated to `history.jsonl.1` at 1 MiB) and
//!   `refused-<id>.json`: every applied, refused or failed update ([`history`]);
//! - `status.json`: the running agent's status (`observe`);
//! - `denied.json`: the denied sources seen lately (`denied`);
//! - `agent.pid`: the running agent's pid, locked while it runs (`agent`);
//! - `*.corrupt`: a file that could not be read, moved aside.
//!
//! The last good set of every source is kept as one JSON file per source. A corrupt
//! file is moved aside and treated as absent.
//!
//! Whoever can write to `state_dir` chooses what the agent allows, so, as sshd's
//! `StrictModes`, the directory must be the agent's own and private, every directory
//! above it root's (or the agent's) and not writable by others (unless sticky, like
//! /tmp), and a state file is read only if it is a regular file of the agent's own,
//! opened without following a symlink.

pub(crate) mod history;
pub(crate) mod rfc3339;

// Every file in `state_dir`, by name. Each is the agent's own, mode 0600 (written
// by `write_atomic`, `open_append` or the pid file's own open), in a 0700 directory.
/// A source's last good list: `source-<id>.json` ([`StateStore::path_for`]).
const SOURCE_PREFIX: &str = "source-";
/// Every applied, refused or failed update, one JSON object a line.
pub(crate) const HISTORY_FILE: &str = "history.jsonl";
/// The previous history file: one is kept.
pub(crate) const HISTORY_ROTATED: &str = "history.jsonl.1";
/// The latest refused update of a source: `refused-<id>.json`.
pub(crate) const REFUSED_PREFIX: &str = "refused-";
/// The running agent's status, rewritten after every change.
pub(crate) const STATUS_FILE: &str = "status.json";
/// The denied sources seen lately, merged and bounded.
pub(crate) const DENIED_FILE: &str = "denied.json";
/// The running agent's pid, locked while it runs.
pub(crate) const PID_FILE: &str = "allowlist.pid";
/// What a corrupt file is renamed to, beside itself: `<name>.corrupt`.
const CORRUPT_SUFFIX: &str = ".corrupt";

use std::{
    collections::BTreeMap,
    fs::{self, File, Metadata, OpenOptions},
    io::{self, Read as _, Write},
    net::IpAddr,
    os::unix::fs::{DirBuilderExt, MetadataExt as _, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::SystemTime,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use thiserror::Error;

/// Bumped when the file layout changes incompatibly.
pub(crate) const STATE_VERSION: u32 = 1;

/// The last good list of one source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SavedList {
    pub version: u32,
    pub source_id: String,
    /// A digest of the source's definition (URL, format, selection): a state file
    /// written for another definition is ignored.
    pub definition: String,
    /// Validated and aggregated.
    pub prefixes: Vec<IpNet>,
    #[serde(with = "rfc3339")]
    pub fetched_at: SystemTime,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// SHA-256 of the document the set was read from (hex).
    pub content_hash: String,
    /// The provider's version of the document, if it publishes one.
    pub serial: Option<String>,
    /// A dns source's addresses and when an answer last held each: the set is those
    /// seen within its `dns_keep`. Absent (empty) for the other sources.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "rfc3339::map"
    )]
    pub seen: BTreeMap<IpAddr, SystemTime>,
}

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot create the state directory {}: {error}", path.display())]
    CreateDir { path: PathBuf, error: io::Error },
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error("{} is corrupt ({detail}); moved aside to {}", path.display(), moved_to.display())]
    Corrupt {
        path: PathBuf,
        moved_to: PathBuf,
        detail: String,
    },
    #[error("cannot write {}: {error}", path.display())]
    Write { path: PathBuf, error: io::Error },
    /// The directory, or one above it, lets someone other than the agent (and root)
    /// put files there: nothing in it can be trusted.
    #[error("refusing state_dir {}: {problem}", state_dir.display())]
    Insecure { state_dir: PathBuf, problem: String },
    /// A state file the agent did not write: a symlink, another user's, writable by
    /// others. It is not read.
    #[error("refusing {}: {reason}; ignored and left in place (the agent's next write replaces it)", path.display())]
    Untrusted { path: PathBuf, reason: String },
}

/// The state directory.
#[derive(Debug, Clone)]
pub(crate) struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// Opens the directory, creating it (see [`prepare_dir`]) if it is missing, and
    /// refuses it if it is not safe.
    pub(crate) fn open(dir: &Path) -> Result<Self, StateError> {
        prepare_dir(dir)?;
        Ok(StateStore {
            dir: dir.to_owned(),
        })
    }

    /// The file holding a source's state.
    pub(crate) fn path_for(&self, source_id: &str) -> PathBuf {
        self.dir
            .join(format!("{SOURCE_PREFIX}{}.json", sanitize(source_id)))
    }

    /// Loads a source's state. `Ok(None)` when there is none; a corrupt file is moved
    /// aside to `*.corrupt` and reported as [`StateError::Corrupt`], which callers
    /// treat as absent.
    pub(crate) fn load(&self, source_id: &str) -> Result<Option<SavedList>, StateError> {
        let path = self.path_for(source_id);
        let state: Option<SavedList> = read_json(&path)?;
        match state {
            Some(s) if s.version != STATE_VERSION || s.source_id != source_id => {
                let detail = format!(
                    "it is version {} of source {:?}, expected version {STATE_VERSION} of {source_id:?}",
                    s.version, s.source_id
                );
                Err(move_aside(&path, detail))
            }
            other => Ok(other),
        }
    }

    /// Writes a source's state atomically.
    pub(crate) fn save(&self, state: &SavedList) -> Result<(), StateError> {
        write_json_atomic(&self.path_for(&state.source_id), state)
    }
}

/// Maps a source id to a file name component, without collisions: ASCII letters,
/// digits, `-` and `_` are kept, everything else becomes `%XX`.
pub(crate) fn sanitize(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn move_aside(path: &Path, detail: String) -> StateError {
    let mut moved_to = path.as_os_str().to_owned();
    moved_to.push(CORRUPT_SUFFIX);
    let moved_to = PathBuf::from(moved_to);
    if let Err(err) = fs::rename(path, &moved_to) {
        return StateError::Corrupt {
            path: path.to_owned(),
            moved_to,
            detail: format!("{detail}; moving it aside failed too: {err}"),
        };
    }
    tracing::warn!(file = %path.display(), moved_to = %moved_to.display(), %detail, "corrupt state file moved aside");
    StateError::Corrupt {
        path: path.to_owned(),
        moved_to,
        detail,
    }
}

/// Reads a JSON file: `Ok(None)` if it doesn't exist; unparseable contents are moved
/// aside to `*.corrupt` and reported; a file the agent did not write (see
/// [`open_trusted`]) is refused and left in place.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    let bytes = match read_trusted(path) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(None),
        Err(StateError::Read { error: source, .. })
            if source.raw_os_error() == Some(libc::EISDIR) =>
        {
            return Err(move_aside(path, source.to_string()));
        }
        Err(err) => return Err(err),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|err| move_aside(path, err.to_string()))
}

/// The contents of a state file, if it exists and is trusted (see [`open_trusted`]).
pub(crate) fn read_trusted(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    let Some(mut file) = open_trusted(path)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|source| StateError::Read {
            path: path.to_owned(),
            error: source,
        })?;
    Ok(Some(bytes))
}

/// Opens a state file for reading without following a symlink, and checks what was
/// opened (not the path, which could change in between): a regular file (a directory
/// is a read error, EISDIR), owned by the agent's user or root, not writable by group
/// or others. `Ok(None)` if there is none.
pub(crate) fn open_trusted(path: &Path) -> Result<Option<File>, StateError> {
    let file = match OpenOptions::new()
        .read(true)
        // O_NONBLOCK: a FIFO planted in its place must not hang the agent.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(open_error(path, err, |error| StateError::Read {
                path: path.to_owned(),
                error,
            }));
        }
    };
    check_opened(path, &file)?;
    Ok(Some(file))
}

/// Opens a state file for appending (and reading its end), creating it 0600, without
/// following a symlink, and checks what was opened as [`open_trusted`] does.
pub(crate) fn open_append(path: &Path) -> Result<File, StateError> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| {
            open_error(path, err, |error| StateError::Write {
                path: path.to_owned(),
                error,
            })
        })?;
    check_opened(path, &file)?;
    Ok(file)
}

/// A failed open: a symlink in place of the file is refused as such, anything else
/// is `other`.
fn open_error(
    path: &Path,
    err: io::Error,
    other: impl FnOnce(io::Error) -> StateError,
) -> StateError {
    if err.raw_os_error() == Some(libc::ELOOP) && is_symlink(path) {
        return StateError::Untrusted {
            path: path.to_owned(),
            reason: format!("it is a symbolic link{}", link_target(path)),
        };
    }
    other(err)
}

/// The checks of [`open_trusted`] on a file already opened (without following a
/// symlink): a regular file, owned by the agent's user or root, not writable by group
/// or others. A directory is a read error (EISDIR).
pub(crate) fn check_opened(path: &Path, file: &File) -> Result<(), StateError> {
    let untrusted = |reason: String| StateError::Untrusted {
        path: path.to_owned(),
        reason,
    };
    let meta = file.metadata().map_err(|source| StateError::Read {
        path: path.to_owned(),
        error: source,
    })?;
    if meta.is_dir() {
        return Err(StateError::Read {
            path: path.to_owned(),
            error: io::Error::from_raw_os_error(libc::EISDIR),
        });
    }
    if !meta.is_file() {
        return Err(untrusted("it is not a regular file".to_owned()));
    }
    if !trusted_owner(meta.uid()) {
        return Err(untrusted(format!(
            "it is owned by uid {}, not by {}",
            meta.uid(),
            trusted_owners()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(untrusted(format!(
            "it is writable by {} (mode {})",
            writers(meta.mode()),
            mode(&meta)
        )));
    }
    Ok(())
}

/// This process's effective user: the one owner, with root, that the agent trusts.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// The owners whose files and directories are trusted: this process's user, and root.
fn trusted_owner(uid: u32) -> bool {
    uid == euid() || uid == 0
}

fn trusted_owners() -> String {
    match euid() {
        0 => "root (uid 0)".to_owned(),
        uid => format!("uid {uid} (this process's user) or root"),
    }
}

fn writers(mode: u32) -> &'static str {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "group and others",
        (true, false) => "its group",
        _ => "others",
    }
}

fn mode(meta: &Metadata) -> String {
    format!("{:04o}", meta.mode() & 0o7777)
}

fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

fn link_target(path: &Path) -> String {
    fs::read_link(path)
        .map(|t| format!(" (to {})", t.display()))
        .unwrap_or_default()
}

/// Makes `state_dir` ready for the agent, or says why it is not safe: creates it if it
/// is missing (missing parents 0755, the directory itself 0700, whatever the umask),
/// then checks it as sshd's `StrictModes` would. The directory must be a directory
/// (not a symlink) owned by this process's user and not writable by group or others;
/// every directory above it must be owned by root or this user and not writable by
/// group or others unless it has the sticky bit (like /tmp). Errors name the path, its
/// owner and mode, and the fix.
pub(crate) fn prepare_dir(dir: &Path) -> Result<(), StateError> {
    let dir = std::path::absolute(dir).map_err(|source| StateError::CreateDir {
        path: dir.to_owned(),
        error: source,
    })?;
    match fs::symlink_metadata(&dir) {
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => create_dir(&dir)?,
        Err(source) => {
            return Err(StateError::Read {
                path: dir,
                error: source,
            });
        }
    }
    verify_dir(&dir, true)
}

/// The read-only check of [`prepare_dir`] for the CLI, which may run as another user
/// than the agent: a missing directory passes (there is nothing to read), and the
/// directory may be root's as well as this user's.
pub(crate) fn check_dir(dir: &Path) -> Result<(), StateError> {
    let dir = std::path::absolute(dir).map_err(|source| StateError::Read {
        path: dir.to_owned(),
        error: source,
    })?;
    match fs::symlink_metadata(&dir) {
        Ok(_) => verify_dir(&dir, false),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateError::Read {
            path: dir,
            error: source,
        }),
    }
}

/// Creates `dir` and its missing parents with exact modes (see [`prepare_dir`]).
fn create_dir(dir: &Path) -> Result<(), StateError> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(
            |p| matches!(fs::symlink_metadata(p), Err(e) if e.kind() == io::ErrorKind::NotFound),
        )
        .collect();
    for path in missing.into_iter().rev() {
        let mode = if path == dir { 0o700 } else { 0o755 };
        let err = |source| StateError::CreateDir {
            path: path.to_owned(),
            error: source,
        };
        match fs::DirBuilder::new().mode(mode).create(path) {
            // Someone else made it in the meantime: the checks judge it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            other => other.map_err(err)?,
        }
        // The mode given to mkdir is subject to the umask: make it exact, on what was
        // created rather than on whatever the path names now.
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(path)
            .and_then(|d| d.set_permissions(fs::Permissions::from_mode(mode)))
            .map_err(err)?;
    }
    Ok(())
}

/// The checks of [`prepare_dir`]; `own`: the directory must be this user's, not root's.
fn verify_dir(dir: &Path, own: bool) -> Result<(), StateError> {
    let insecure = |problem: String| StateError::Insecure {
        state_dir: dir.to_owned(),
        problem,
    };
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| StateError::Read {
            path,
            error: source,
        }
    };
    let chown = match euid() {
        0 => "chown root:root".to_owned(),
        uid => format!("chown {uid}"),
    };
    let fix = format!("`{chown} {d} && chmod 0700 {d}`", d = dir.display());
    let meta = fs::symlink_metadata(dir).map_err(read_err(dir))?;
    if meta.file_type().is_symlink() {
        return Err(insecure(format!(
            "it is a symbolic link{}; set state_dir to the directory itself",
            link_target(dir)
        )));
    }
    if !meta.is_dir() {
        return Err(insecure("it is not a directory".to_owned()));
    }
    let owner_ok = if own {
        meta.uid() == euid()
    } else {
        trusted_owner(meta.uid())
    };
    if !owner_ok {
        return Err(insecure(format!(
            "it is owned by uid {} (mode {}), not by {}; fix with {fix}",
            meta.uid(),
            mode(&meta),
            if own {
                format!("uid {} (the agent's user)", euid())
            } else {
                trusted_owners()
            }
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(insecure(format!(
            "it is writable by {} (owner uid {}, mode {}): they could forge the lists the agent loads; fix with {fix}",
            writers(meta.mode()),
            meta.uid(),
            mode(&meta)
        )));
    }
    check_ancestors(dir)
}

/// Every directory above `dir`: as written (a symlink on the way is judged by its
/// owner, since whoever owns it can point it elsewhere), and as resolved.
fn check_ancestors(dir: &Path) -> Result<(), StateError> {
    let insecure = |problem: String| StateError::Insecure {
        state_dir: dir.to_owned(),
        problem,
    };
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |error| StateError::Read { path, error }
    };
    let real = fs::canonicalize(dir).map_err(read_err(dir))?;
    let written = dir
        .ancestors()
        .skip(1)
        .map(|p| (p, fs::symlink_metadata(p)));
    let resolved = real.ancestors().skip(1).map(|p| (p, fs::metadata(p)));
    for (path, meta) in written.chain(resolved) {
        let meta = meta.map_err(read_err(path))?;
        if !trusted_owner(meta.uid()) {
            return Err(insecure(format!(
                "{}, above it, is owned by uid {} (mode {}), who could replace state_dir; fix with `chown root:root {}`",
                path.display(),
                meta.uid(),
                mode(&meta),
                path.display()
            )));
        }
        let sticky = meta.mode() & 0o1000 != 0;
        if !meta.file_type().is_symlink() && meta.mode() & 0o022 != 0 && !sticky {
            return Err(insecure(format!(
                "{}, above it, is writable by {} without the sticky bit (owner uid {}, mode {}): they could rename state_dir away and put their own in its place; fix with `chmod go-w {}`",
                path.display(),
                writers(meta.mode()),
                meta.uid(),
                mode(&meta),
                path.display()
            )));
        }
    }
    Ok(())
}

/// Copies the state files the agent reads as lists or records (every trusted
/// `*.json` file in `from`) into `to`: a dry run's scratch state. What could not
/// be read is left out and returned.
pub(crate) fn copy_json_files(from: &Path, to: &Path) -> Vec<StateError> {
    let mut skipped = Vec::new();
    let Ok(entries) = fs::read_dir(from) else {
        return skipped;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json")
            || entry.file_type().is_ok_and(|t| t.is_dir())
        {
            continue;
        }
        match read_trusted(&path) {
            Ok(Some(bytes)) => {
                let copy = to.join(entry.file_name());
                if let Err(error) = fs::write(&copy, bytes) {
                    skipped.push(StateError::Write { path: copy, error });
                }
            }
            Ok(None) => {}
            Err(err) => skipped.push(err),
        }
    }
    skipped
}

/// Writes `value` as JSON to `path` atomically: a temporary file in the same
/// directory (mode 0600), written, fsynced, renamed over `path`, then the directory
/// fsynced.
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("state serialises");
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Writes bytes to `path` atomically (see [`write_json_atomic`]).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let err = |source| StateError::Write {
        path: path.to_owned(),
        error: source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| err(io::Error::other("no file name")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        // O_EXCL (create_new) never opens an existing file, nor follows a link; the
        // O_NOFOLLOW says so too.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// SHA-256 of a document, in hex.
pub(crate) fn content_hash(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn state(id: &str) -> SavedList {
        SavedList {
            version: STATE_VERSION,
            source_id: id.to_owned(),
            definition: "d".into(),
            prefixes: vec![
                "192.0.2.0/24".parse().unwrap(),
                "2001:db8::/48".parse().unwrap(),
            ],
            fetched_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_762_000_000),
            etag: Some("\"abc\"".into()),
            last_modified: Some("Sun, 02 Nov 2026 08:00:00 GMT".into()),
            content_hash: content_hash(b"doc"),
            serial: Some("74".into()),
            seen: BTreeMap::new(),
        }
    }

    #[test]
    fn creates_the_directory_0700_and_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/state");
        let store = StateStore::open(&dir).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(store.load("intercom/intercom-us").unwrap(), None);
        let s = state("intercom/intercom-us");
        store.save(&s).unwrap();
        assert_eq!(store.load("intercom/intercom-us").unwrap(), Some(s.clone()));
        // Overwrite, and no temporary files are left behind.
        let mut s2 = s.clone();
        s2.prefixes.pop();
        store.save(&s2).unwrap();
        assert_eq!(store.load("intercom/intercom-us").unwrap(), Some(s2));
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            [std::ffi::OsString::from(
                "source-intercom%2Fintercom-us.json"
            )]
        );
        let file_mode = fs::metadata(store.path_for("intercom/intercom-us"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(file_mode, 0o600);
    }

    #[test]
    fn dns_sources_keep_when_each_address_was_seen() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::open(tmp.path()).unwrap();
        // A file of the other sources (no `seen`) reads as before, and is written
        // without it.
        let plain = state("p/0");
        store.save(&plain).unwrap();
        let text = fs::read_to_string(store.path_for("p/0")).unwrap();
        assert!(!text.contains("seen"), "{text}");
        assert_eq!(store.load("p/0").unwrap(), Some(plain));

        let mut dns = state("adyen/0");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_762_000_000);
        dns.seen.insert("192.0.2.10".parse().unwrap(), at);
        dns.seen
            .insert("2001:db8::1".parse().unwrap(), at + Duration::from_secs(60));
        store.save(&dns).unwrap();
        let text = fs::read_to_string(store.path_for("adyen/0")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json["seen"],
            serde_json::json!({
                "192.0.2.10": "2025-11-01T12:26:40Z",
                "2001:db8::1": "2025-11-01T12:27:40Z",
            })
        );
        assert_eq!(store.load("adyen/0").unwrap(), Some(dns));
    }

    #[test]
    fn file_names_do_not_collide() {
        assert_eq!(sanitize("office/0"), "office%2F0");
        assert_ne!(sanitize("a/b"), sanitize("a%2Fb"));
        assert_ne!(sanitize("a-/b"), sanitize("a/-b"));
        assert_eq!(
            sanitize("x/../../etc"),
            "x%2F..%2F..%2Fetc".replace("..", "%2E%2E")
        );
    }

    #[test]
    fn corrupt_file_is_moved_aside_and_treated_as_absent() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::open(tmp.path()).unwrap();
        let path = store.path_for("p/0");
        fs::write(&path, b"{\"version\": 1, \"source_id\": \"p/0\", \"prefi").unwrap();
        let err = store.load("p/0").unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("corrupt"), "{text}");
        assert!(!path.exists());
        let aside = tmp.path().join("source-p%2F0.json.corrupt");
        assert!(aside.exists());
        // The next load finds nothing, and a new save works.
        assert_eq!(store.load("p/0").unwrap(), None);
        store.save(&state("p/0")).unwrap();
        assert!(store.load("p/0").unwrap().is_some());
    }

    #[test]
    fn state_of_another_source_or_version_is_moved_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::open(tmp.path()).unwrap();
        write_json_atomic(&store.path_for("p/0"), &state("q/0")).unwrap();
        assert!(matches!(store.load("p/0"), Err(StateError::Corrupt { .. })));
        let mut s = state("p/0");
        s.version = 99;
        store.save(&s).unwrap();
        assert!(matches!(store.load("p/0"), Err(StateError::Corrupt { .. })));
    }

    #[test]
    fn unwritable_directory_is_an_error_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let store = StateStore::open(&dir).unwrap();
        fs::remove_dir(&dir).unwrap();
        let err = store.save(&state("p/0")).unwrap_err();
        assert!(err.to_string().starts_with("cannot write"), "{err}");
    }

    /// Whether this test may chown files to another user (root only); says so when not.
    fn can_chown() -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return true;
        }
        eprintln!("SKIPPED: giving a file to another user needs root");
        false
    }

    fn chown(path: &Path, uid: u32) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; lchown does not follow a symlink.
        assert_eq!(unsafe { libc::lchown(c.as_ptr(), uid, u32::MAX) }, 0);
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    const NOBODY: u32 = 65534;

    #[test]
    fn a_symlinked_state_file_is_refused_and_its_target_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::open(&tmp.path().join("state")).unwrap();
        // A list planted elsewhere, linked in as the source's state.
        let forged = tmp.path().join("forged.json");
        write_json_atomic(&forged, &state("p/0")).unwrap();
        let before = fs::read(&forged).unwrap();
        let path = store.path_for("p/0");
        std::os::unix::fs::symlink(&forged, &path).unwrap();
        let err = store
            .load("p/0")
            .expect_err("a symlinked state file must not be loaded");
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains("symbolic link"),
            "{text}"
        );
        assert_eq!(fs::read(&forged).unwrap(), before);
        // Saving replaces the link itself, never writes through it.
        store.save(&state("p/0")).unwrap();
        assert!(!fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(fs::read(&forged).unwrap(), before);
    }

    #[test]
    fn a_state_file_owned_by_another_user_is_refused() {
        if !can_chown() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::open(&tmp.path().join("state")).unwrap();
        store.save(&state("p/0")).unwrap();
        let path = store.path_for("p/0");
        chown(&path, NOBODY);
        let err = store
            .load("p/0")
            .expect_err("a state file owned by another user must not be loaded");
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains("uid 65534"),
            "{text}"
        );
        // Left where it is, as the message says, for someone to look at.
        assert!(path.exists());
    }

    #[test]
    fn a_group_or_world_writable_state_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::open(&tmp.path().join("state")).unwrap();
        store.save(&state("p/0")).unwrap();
        let path = store.path_for("p/0");
        for mode in [0o620, 0o602] {
            chmod(&path, mode);
            let err = store
                .load("p/0")
                .expect_err("a state file others can write must not be loaded");
            let text = err.to_string();
            assert!(text.contains("writable"), "{mode:o}: {text}");
        }
        chmod(&path, 0o644);
        assert!(store.load("p/0").unwrap().is_some());
    }

    #[test]
    fn a_world_writable_state_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        fs::create_dir(&dir).unwrap();
        for mode in [0o777, 0o770, 0o1777] {
            chmod(&dir, mode);
            let err = StateStore::open(&dir).expect_err("a state_dir others can write");
            let text = err.to_string();
            assert!(
                text.contains(&dir.display().to_string())
                    && text.contains(&format!("{mode:04o}"))
                    && text.contains("chmod 0700"),
                "{mode:o}: {text}"
            );
        }
    }

    #[test]
    fn a_state_dir_owned_by_another_user_or_a_symlink_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        chmod(&real, 0o700);
        let link = tmp.path().join("state");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = StateStore::open(&link).expect_err("a symlinked state_dir");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        if !can_chown() {
            return;
        }
        chown(&real, NOBODY);
        let err = StateStore::open(&real).expect_err("a state_dir owned by another user");
        let text = err.to_string();
        assert!(
            text.contains("uid 65534") && text.contains("chown"),
            "{text}"
        );
    }

    #[test]
    fn a_writable_parent_without_the_sticky_bit_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("shared");
        let dir = parent.join("state");
        fs::create_dir(&parent).unwrap();
        fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o700);
        // Anyone could rename `state` away and put their own in its place.
        chmod(&parent, 0o777);
        let err = StateStore::open(&dir).expect_err("a parent others can write");
        let text = err.to_string();
        assert!(
            text.contains(&parent.display().to_string()) && text.contains("0777"),
            "{text}"
        );
        // With the sticky bit (as /tmp), only the owner may rename or delete it.
        chmod(&parent, 0o1777);
        StateStore::open(&dir).unwrap();
    }

    #[test]
    fn the_state_dir_is_created_0700_and_its_parents_0755_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        for (umask, name) in [(0o022, "a"), (0o077, "b")] {
            let dir = tmp.path().join(name).join("lib/state");
            // SAFETY: umask has no preconditions. Other tests only ever see a stricter
            // one, which changes none of their modes that matter.
            let old = unsafe { libc::umask(umask) };
            let result = prepare_dir(&dir);
            unsafe { libc::umask(old) };
            result.unwrap();
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode(&dir), 0o700, "umask {umask:03o}");
            assert_eq!(mode(dir.parent().unwrap()), 0o755, "umask {umask:03o}");
            assert_eq!(mode(&tmp.path().join(name)), 0o755, "umask {umask:03o}");
            // Ready as it is: a second start changes nothing.
            prepare_dir(&dir).unwrap();
        }
    }

    #[test]
    fn the_read_only_check_creates_nothing_and_refuses_the_same() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        check_dir(&dir).unwrap();
        assert!(!dir.exists());
        prepare_dir(&dir).unwrap();
        check_dir(&dir).unwrap();
        chmod(&dir, 0o777);
        let err = check_dir(&dir).unwrap_err();
        assert!(matches!(err, StateError::Insecure { .. }), "{err}");
        chmod(&dir, 0o700);
        chmod(tmp.path(), 0o777);
        let err = check_dir(&dir).unwrap_err();
        assert!(err.to_string().contains("sticky"), "{err}");
        chmod(tmp.path(), 0o700);
    }

    #[test]
    fn a_directory_or_a_fifo_in_place_of_a_state_file_is_not_read() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::open(tmp.path()).unwrap();
        let path = store.path_for("p/0");
        fs::create_dir(&path).unwrap();
        assert!(matches!(store.load("p/0"), Err(StateError::Corrupt { .. })));
        assert!(!path.exists());
        // A FIFO would block a plain open until someone writes to it.
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = store.load("p/0").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let json = serde_json::to_value(state("p/0")).unwrap();
        assert_eq!(json["fetched_at"], "2025-11-01T12:26:40Z");
    }
}
