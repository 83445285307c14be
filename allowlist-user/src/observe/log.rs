//! The log: one line per event on stderr, human-readable or JSON, at the level
//! `RUST_LOG` sets (info by default).
//!
//! When stderr is the journal (systemd names the stream it connected in
//! `JOURNAL_STREAM`), every line starts with its syslog priority, `<3>` for an error
//! to `<7>` for debug: journald strips the prefix and records the priority, so
//! `journalctl -p warning -u allowlist` shows the warnings and errors and nothing
//! else. Those lines carry no timestamp of their own, since the journal stamps each
//! one. A `JOURNAL_STREAM` inherited by a process whose stderr is something else (a
//! terminal opened from a service, a redirection) is ignored, as sd_journal_stream_fd(3)
//! asks.

use std::fmt::{self, Write as _};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::{Format, JsonFields, Writer},
    },
    registry::LookupSpan,
};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Human,
    Json,
}

/// Where the log goes, once [`Log::init`] has set it up.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Log {
    journal: bool,
}

impl Log {
    /// Installs the process's logger on stderr.
    pub(crate) fn init(format: LogFormat) -> Log {
        let journal = stderr_is_journal();
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match (format, journal) {
            (LogFormat::Human, false) => builder.init(),
            (LogFormat::Json, false) => builder.json().init(),
            (LogFormat::Human, true) => builder
                .with_ansi(false)
                .event_format(Prioritized(Format::default().without_time()))
                .init(),
            (LogFormat::Json, true) => builder
                .fmt_fields(JsonFields::new())
                .event_format(Prioritized(Format::default().json().without_time()))
                .init(),
        }
        Log { journal }
    }

    /// Prints the error that ends the process, the log's last words.
    pub(crate) fn fatal(self, err: &anyhow::Error) {
        let text = format!("allowlist: {err:#}\n");
        if self.journal {
            eprint!("{}", with_priority(&text, priority(&Level::ERROR)));
        } else {
            eprint!("{text}");
        }
    }
}

/// Whether stderr is the stream `JOURNAL_STREAM` names.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    // SAFETY: fstat writes into the struct it is given; a closed fd 2 is an error.
    let stat = unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        (libc::fstat(libc::STDERR_FILENO, &mut stat) == 0).then_some(stat)
    };
    stat.is_some_and(|s| names(&stream, s.st_dev, s.st_ino))
}

/// Whether a `JOURNAL_STREAM` value ("<device>:<inode>", decimal) names the file
/// with this device and inode.
fn names(journal_stream: &std::ffi::OsStr, dev: u64, ino: u64) -> bool {
    journal_stream
        .to_str()
        .and_then(|s| s.split_once(':'))
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

/// The syslog priority of a level (sd-daemon(3)): err, warning, info, debug.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// `text` with `<priority>` before every line, so that the continuation lines of a
/// message that spans several (a config error's excerpt, say) keep its priority too.
fn with_priority(text: &str, priority: u8) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for line in text.split_inclusive('\n') {
        let _ = write!(out, "<{priority}>{line}");
    }
    out
}

/// An event format whose lines start with the event's syslog priority.
struct Prioritized<F>(F);

impl<S, N, F> FormatEvent<S, N> for Prioritized<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&with_priority(&line, priority(event.metadata().level())))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn emit_each_level() {
        tracing::error!(source = "intercom/0", "cannot fetch");
        tracing::warn!("refresh failed;\nkeeping the list in force");
        tracing::info!(interface = "eth0", "filtering");
        tracing::debug!("a detail");
    }

    #[test]
    fn journal_lines_carry_their_priority_and_no_timestamp() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::DEBUG)
            .with_writer(buffer.clone())
            .with_ansi(false)
            .event_format(Prioritized(Format::default().without_time()))
            .finish();
        tracing::subscriber::with_default(subscriber, emit_each_level);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "<3>ERROR allowlist_user::observe::log::tests: cannot fetch source=\"intercom/0\"",
                "<4> WARN allowlist_user::observe::log::tests: refresh failed;",
                "<4>keeping the list in force",
                "<6> INFO allowlist_user::observe::log::tests: filtering interface=\"eth0\"",
                "<7>DEBUG allowlist_user::observe::log::tests: a detail",
            ],
            "{text}"
        );
    }

    #[test]
    fn journal_json_lines_are_json_after_the_priority() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .fmt_fields(JsonFields::new())
            .event_format(Prioritized(Format::default().json().without_time()))
            .finish();
        tracing::subscriber::with_default(subscriber, emit_each_level);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let parsed: Vec<(&str, serde_json::Value)> = text
            .lines()
            .map(|l| {
                let (prefix, json) = l.split_at(3);
                (prefix, serde_json::from_str(json).expect(l))
            })
            .collect();
        assert_eq!(parsed.len(), 3, "{text}");
        for ((prefix, json), (want_prefix, level)) in
            parsed
                .iter()
                .zip([("<3>", "ERROR"), ("<4>", "WARN"), ("<6>", "INFO")])
        {
            assert_eq!(*prefix, want_prefix);
            assert_eq!(json["level"], level);
            assert!(json.get("timestamp").is_none(), "{json}");
        }
        assert_eq!(
            parsed[1].1["fields"]["message"], "refresh failed;\nkeeping the list in force",
            "JSON escapes the newline: one line"
        );
    }

    #[test]
    fn a_fatal_error_of_several_lines_keeps_its_priority_on_each() {
        assert_eq!(
            with_priority("allowlist: bad config\n  | ports = [0]\n", 3),
            "<3>allowlist: bad config\n<3>  | ports = [0]\n"
        );
        assert_eq!(with_priority("no newline", 6), "<6>no newline");
    }

    #[test]
    fn journal_stream_is_believed_only_when_it_names_the_file() {
        use std::{ffi::OsStr, os::unix::fs::MetadataExt as _};
        let file = tempfile::NamedTempFile::new().unwrap();
        let meta = file.as_file().metadata().unwrap();
        let (dev, ino) = (meta.dev(), meta.ino());
        assert!(names(OsStr::new(&format!("{dev}:{ino}")), dev, ino));
        for other in [
            format!("{dev}:{}", ino + 1),
            format!("{}:{ino}", dev + 1),
            format!("{dev}"),
            format!("{dev}:"),
            format!(":{ino}"),
            format!("{dev}:{ino}:0"),
            format!(" {dev}:{ino}"),
            String::new(),
        ] {
            assert!(!names(OsStr::new(&other), dev, ino), "{other:?}");
        }
    }
}
