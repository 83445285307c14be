//! The last good set of every source, kept in `state_dir` as one JSON file per source,
//! written atomically. A corrupt file is moved aside and treated as absent.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::SystemTime,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use thiserror::Error;

/// Bumped when the file layout changes incompatibly.
pub const STATE_VERSION: u32 = 1;

/// The last good list of one source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceState {
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
}

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot create the state directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is corrupt ({detail}); moved aside to {}", path.display(), moved_to.display())]
    Corrupt {
        path: PathBuf,
        moved_to: PathBuf,
        detail: String,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// Opens the directory, creating it with mode 0700 if it is missing.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        if !dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StateError::CreateDir {
                    path: dir.to_owned(),
                    source,
                })?;
            // `recursive` applies the mode only subject to the umask: make it exact.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
                StateError::CreateDir {
                    path: dir.to_owned(),
                    source,
                }
            })?;
        }
        Ok(StateStore {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding a source's state.
    pub fn path_for(&self, source_id: &str) -> PathBuf {
        self.dir
            .join(format!("source-{}.json", sanitize(source_id)))
    }

    /// Loads a source's state. `Ok(None)` when there is none; a corrupt file is moved
    /// aside to `*.corrupt` and reported as [`StateError::Corrupt`], which callers
    /// treat as absent.
    pub fn load(&self, source_id: &str) -> Result<Option<SourceState>, StateError> {
        let path = self.path_for(source_id);
        let state: Option<SourceState> = read_json(&path)?;
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
    pub fn save(&self, state: &SourceState) -> Result<(), StateError> {
        write_json_atomic(&self.path_for(&state.source_id), state)
    }
}

/// Maps a source id to a file name component, without collisions: ASCII letters,
/// digits, `-` and `_` are kept, everything else becomes `%XX`.
pub fn sanitize(id: &str) -> String {
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
    moved_to.push(".corrupt");
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
/// aside to `*.corrupt` and reported.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source)
            if source.kind() == io::ErrorKind::InvalidData
                || source.raw_os_error() == Some(libc::EISDIR) =>
        {
            return Err(move_aside(path, source.to_string()));
        }
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|err| move_aside(path, err.to_string()))
}

/// Writes `value` as JSON to `path` atomically: a temporary file in the same
/// directory (mode 0600), written, fsynced, renamed over `path`, then the directory
/// fsynced.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("state serialises");
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Writes bytes to `path` atomically (see [`write_json_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let err = |source| StateError::Write {
        path: path.to_owned(),
        source,
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
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
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
pub fn content_hash(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Serialises a `SystemTime` as an RFC 3339 string (UTC, seconds).
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_seconds(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(D::Error::custom)
    }

    /// The same for `Option<SystemTime>` (`null` when absent).
    pub mod option {
        use std::time::SystemTime;

        use serde::{Deserialize, Deserializer, Serializer, de::Error};

        pub fn serialize<S: Serializer>(
            time: &Option<SystemTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match time {
                Some(t) => s.collect_str(&humantime::format_rfc3339_seconds(*t)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| humantime::parse_rfc3339_weak(&text).map_err(D::Error::custom))
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn state(id: &str) -> SourceState {
        SourceState {
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
        let store = StateStore::open(&tmp.path().join("s")).unwrap();
        fs::remove_dir(store.dir()).unwrap();
        let err = store.save(&state("p/0")).unwrap_err();
        assert!(err.to_string().starts_with("cannot write"), "{err}");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let json = serde_json::to_value(state("p/0")).unwrap();
        assert_eq!(json["fetched_at"], "2025-11-01T12:26:40Z");
    }
}
