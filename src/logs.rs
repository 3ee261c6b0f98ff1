//! The access log and the audit log: JSON lines, written by a thread of their own so a slow
//! disk never holds up a request. When the writer falls behind by more than a bounded queue,
//! lines are dropped and counted rather than buffered without limit.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Duration;

use crate::metrics;

/// Lines a log may have queued before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// Where a log goes: `off`, `stdout`, `stderr`, or a file path (appended to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Off,
    Stdout,
    Stderr,
    File(PathBuf),
}

impl Destination {
    /// `relative` resolves a file path against the config file's directory.
    pub fn parse(value: &str, relative: impl Fn(&Path) -> PathBuf) -> Destination {
        match value {
            "off" | "" => Destination::Off,
            "stdout" => Destination::Stdout,
            "stderr" => Destination::Stderr,
            path => Destination::File(relative(Path::new(path))),
        }
    }
}

enum Message {
    Line(String),
    /// Reopen the file (after logrotate moved it), then acknowledge.
    Reopen(SyncSender<()>),
    /// Acknowledge once everything before it is written.
    Flush(SyncSender<()>),
}

/// One log's writer. Cloning shares the writer.
#[derive(Clone)]
pub struct LogSink {
    name: &'static str,
    destination: Destination,
    queue: SyncSender<Message>,
}

impl LogSink {
    /// Opens the destination now (so a bad path is a config error) and starts its writer.
    pub fn open(name: &'static str, destination: &Destination) -> io::Result<Option<LogSink>> {
        let out = match destination {
            Destination::Off => return Ok(None),
            d => Output::open(d)?,
        };
        let (queue, rx) = mpsc::sync_channel(QUEUE);
        let d = destination.clone();
        std::thread::Builder::new()
            .name(format!("{name}-log"))
            .spawn(move || write_lines(out, &d, &rx))?;
        Ok(Some(LogSink {
            name,
            destination: destination.clone(),
            queue,
        }))
    }

    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// Queues one line (without its newline).
    pub fn write(&self, line: String) {
        match self.queue.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => metrics::log_line_dropped(self.name),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Queues one record as a JSON line.
    pub fn record(&self, record: &impl serde::Serialize) {
        match serde_json::to_string(record) {
            Ok(line) => self.write(line),
            Err(e) => log::warn!("{} log: unserializable record: {e}", self.name),
        }
    }

    /// Reopens the file, for log rotation; waits at most a second.
    pub fn reopen(&self) {
        self.ask(Message::Reopen);
    }

    /// Waits (at most a second) until every queued line is written.
    pub fn flush(&self) {
        self.ask(Message::Flush);
    }

    fn ask(&self, message: fn(SyncSender<()>) -> Message) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.queue.send(message(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(1));
        }
    }
}

enum Output {
    Stdout(io::Stdout),
    Stderr(io::Stderr),
    File(BufWriter<File>),
}

impl Output {
    fn open(destination: &Destination) -> io::Result<Output> {
        Ok(match destination {
            Destination::Stdout => Output::Stdout(io::stdout()),
            Destination::Stderr => Output::Stderr(io::stderr()),
            Destination::File(path) => Output::File(BufWriter::new(
                OpenOptions::new().create(true).append(true).open(path)?,
            )),
            Destination::Off => Output::Stdout(io::stdout()),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Output::Stdout(w) => w,
            Output::Stderr(w) => w,
            Output::File(w) => w,
        }
    }
}

fn write_lines(mut out: Output, destination: &Destination, rx: &Receiver<Message>) {
    let mut failing = false;
    let report = |result: io::Result<()>, failing: &mut bool| match result {
        Ok(()) => *failing = false,
        // Said once per run of failures, not once per line.
        Err(e) if !*failing => {
            *failing = true;
            log::error!("log {destination:?}: {e}");
        }
        Err(_) => {}
    };
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Write what is queued, then flush once: one syscall for a burst of lines.
        while let Some(message) = next.take() {
            match message {
                Message::Line(mut line) => {
                    line.push('\n');
                    let r = out.writer().write_all(line.as_bytes());
                    report(r, &mut failing);
                }
                Message::Reopen(done) => {
                    report(out.writer().flush(), &mut failing);
                    match Output::open(destination) {
                        Ok(o) => out = o,
                        Err(e) => log::error!("log {destination:?}: reopen failed: {e}"),
                    }
                    let _ = done.send(());
                }
                Message::Flush(done) => {
                    report(out.writer().flush(), &mut failing);
                    let _ = done.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        report(out.writer().flush(), &mut failing);
    }
}

/// The gateway's two logs.
#[derive(Clone, Default)]
pub struct Logs {
    pub access: Option<LogSink>,
    pub audit: Option<LogSink>,
}

impl Logs {
    /// Opens the logs a config names, taking over the writers of `previous` where the
    /// destination is unchanged (and reopening them, so SIGHUP also serves log rotation).
    pub fn open(
        access: &Destination,
        audit: &Destination,
        previous: Option<&Logs>,
    ) -> Result<Logs, (&'static str, io::Error)> {
        let reuse = |name: &'static str,
                     want: &Destination,
                     had: Option<&LogSink>|
         -> Result<Option<LogSink>, (&'static str, io::Error)> {
            if let Some(sink) = had.filter(|s| s.destination() == want) {
                sink.reopen();
                return Ok(Some(sink.clone()));
            }
            LogSink::open(name, want).map_err(|e| (name, e))
        };
        Ok(Logs {
            access: reuse("access", access, previous.and_then(|p| p.access.as_ref()))?,
            audit: reuse("audit", audit, previous.and_then(|p| p.audit.as_ref()))?,
        })
    }

    pub fn flush(&self) {
        for sink in [&self.access, &self.audit].into_iter().flatten() {
            sink.flush();
        }
    }
}

/// One line of the access log.
#[derive(Debug, serde::Serialize)]
pub struct AccessRecord<'a> {
    pub time: String,
    pub log: &'static str,
    pub request_id: &'a str,
    pub client_ip: std::net::IpAddr,
    pub method: &'a str,
    pub host: &'a str,
    /// The path as sent, without the query (which may carry a token).
    pub path: &'a str,
    /// 499: the client went away before an answer.
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<std::net::SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<&'a str>,
    pub duration_ms: f64,
    pub bytes_sent: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<&'a str>,
}

/// One line of the audit log: an authentication or authorization decision.
#[derive(Debug, serde::Serialize)]
pub struct AuditRecord<'a> {
    pub time: String,
    pub log: &'static str,
    pub request_id: &'a str,
    pub client_ip: std::net::IpAddr,
    pub method: &'a str,
    pub path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<&'a str>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The refusal's status; an admitted request's status is in the access log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `ok`, or why: `expired`, `bad_signature`, `insufficient_role`, `rate_limited` …
    pub reason: std::borrow::Cow<'a, str>,
    /// The policy rule that decided: `allow[N]` (the route's N-th `[[routes.allow]]`, from 0),
    /// `deny[N]`, or `authenticated` for a route without rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// `false` when the route is in shadow mode and the refusal was not carried out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforced: Option<bool>,
    /// What the route's external decision point decided: `allow`, `deny`, `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ext_authz: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<&'a str>,
    /// [`token_fingerprint`] of the bearer token, never the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A token named in the audit log without being revealed: the first 12 hex digits of its
/// SHA-256, enough to match log lines for one token, useless to replay it.
pub fn token_fingerprint(token: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(token.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}
