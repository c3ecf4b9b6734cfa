//! Logging setup: `tracing-subscriber` with a `RUST_LOG` filter, human
//! format on a terminal and JSON lines otherwise (or as chosen), and an
//! optional access log: one line per call under the target
//! [`ACCESS_TARGET`], emitted with [`access`].

use std::{io::IsTerminal, str::FromStr, time::Duration};

use tracing_subscriber::{filter::EnvFilter, fmt, prelude::*};

/// The access log's tracing target.
pub const ACCESS_TARGET: &str = "balancer::access";

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `Text` when stderr is a terminal, `Json` otherwise.
    #[default]
    Auto,
    Text,
    Json,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoggingError {
    #[error("unknown log format `{0}` (expected auto, text or json)")]
    UnknownFormat(String),
    #[error("bad RUST_LOG filter `{filter}`: {reason}")]
    BadFilter { filter: String, reason: String },
    #[error("a global logger is already installed")]
    AlreadyInstalled,
}

impl FromStr for LogFormat {
    type Err = LoggingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(LogFormat::Auto),
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(LoggingError::UnknownFormat(other.to_owned())),
        }
    }
}

impl LogFormat {
    /// `Auto` resolved against whether stderr is a terminal.
    pub fn resolve(self, stderr_is_terminal: bool) -> LogFormat {
        match self {
            LogFormat::Auto if stderr_is_terminal => LogFormat::Text,
            LogFormat::Auto => LogFormat::Json,
            other => other,
        }
    }
}

/// The filter: `RUST_LOG` if set (else `info`), with the access log turned
/// on or off on top of it. The access log is off unless asked for, even
/// under `RUST_LOG=trace`, so that it never floods a debug session.
pub fn filter(rust_log: Option<&str>, access_log: bool) -> Result<EnvFilter, LoggingError> {
    let base = rust_log.filter(|s| !s.trim().is_empty()).unwrap_or("info");
    let access = if access_log { "info" } else { "off" };
    let spec = format!("{base},{ACCESS_TARGET}={access}");
    EnvFilter::builder().parse(&spec).map_err(|e| LoggingError::BadFilter {
        filter: base.to_owned(),
        reason: e.to_string(),
    })
}

/// Installs the global subscriber (logs go to stderr).
pub fn init(format: LogFormat, access_log: bool) -> Result<(), LoggingError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter(rust_log.as_deref(), access_log)?;
    let terminal = std::io::stderr().is_terminal();
    let format = format.resolve(terminal);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text | LogFormat::Auto => registry
            .with(fmt::layer().with_ansi(terminal).with_writer(std::io::stderr))
            .try_init(),
    };
    result.map_err(|_| LoggingError::AlreadyInstalled)
}

/// One finished call, for the access log.
#[derive(Debug, Clone, Copy)]
pub struct AccessEntry<'a> {
    pub service: &'a str,
    /// `/package.Service/Method`.
    pub method: &'a str,
    /// `None` when no endpoint was picked (no endpoint available).
    pub endpoint: Option<std::net::SocketAddr>,
    /// gRPC status code; `None` when the stream was reset before one.
    pub grpc_status: Option<u16>,
    pub duration: Duration,
    /// Attempts beyond the first.
    pub retries: u32,
    /// The fault injected into the call, if any: `delay`, `abort` or
    /// `delay+abort`.
    pub injected: Option<&'static str>,
    /// The call's trace, when it was traced (sampled).
    pub trace_id: Option<crate::traces::TraceId>,
}

/// Emits one access log line (a no-op unless the access log is enabled).
pub fn access(e: &AccessEntry<'_>) {
    tracing::info!(
        target: "balancer::access",
        service = e.service,
        method = e.method,
        endpoint = e.endpoint.map(tracing::field::display),
        grpc_status = e.grpc_status,
        duration_ms = e.duration.as_secs_f64() * 1e3,
        retries = e.retries,
        injected = e.injected,
        trace_id = e.trace_id.map(tracing::field::display),
        "call"
    );
}

/// Whether the access log is enabled (to skip building the entry).
pub fn access_enabled() -> bool {
    tracing::enabled!(target: "balancer::access", tracing::Level::INFO)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_auto_follows_the_terminal() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!(
            "xml".parse::<LogFormat>().unwrap_err().to_string(),
            "unknown log format `xml` (expected auto, text or json)"
        );
        assert_eq!(LogFormat::Auto.resolve(true), LogFormat::Text);
        assert_eq!(LogFormat::Auto.resolve(false), LogFormat::Json);
        assert_eq!(LogFormat::Text.resolve(false), LogFormat::Text);
    }

    /// Captures what a subscriber writes.
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(access_log: bool) -> String {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::registry()
            .with(filter(Some("warn"), access_log).unwrap())
            .with(fmt::layer().json().with_writer(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            access(&AccessEntry {
                service: "greeter",
                method: "/helloworld.Greeter/SayHello",
                endpoint: Some("127.0.0.1:50051".parse().unwrap()),
                grpc_status: Some(0),
                duration: Duration::from_micros(1500),
                retries: 0,
                injected: Some("abort"),
                trace_id: Some(crate::traces::TraceId([0xab; 16])),
            });
            assert_eq!(access_enabled(), access_log);
        });
        let out = buf.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn access_lines_carry_the_call_and_are_off_by_default() {
        let on = logged(true);
        let line: serde_json::Value = serde_json::from_str(on.trim()).expect("one JSON line");
        assert_eq!(line["target"], "balancer::access");
        let f = &line["fields"];
        assert_eq!(f["service"], "greeter");
        assert_eq!(f["method"], "/helloworld.Greeter/SayHello");
        assert_eq!(f["endpoint"], "127.0.0.1:50051");
        assert_eq!(f["grpc_status"], 0);
        assert_eq!(f["duration_ms"], 1.5);
        assert_eq!(f["injected"], "abort");
        assert_eq!(f["trace_id"], "abababababababababababababababab");
        // Off unless asked for, even though the base filter lets warnings through.
        assert_eq!(logged(false), "");
    }

    #[test]
    fn access_log_is_off_unless_asked_for() {
        let off = filter(Some("trace"), false).unwrap().to_string();
        assert!(off.contains("balancer::access=off"), "{off}");
        let on = filter(None, true).unwrap().to_string();
        assert!(on.contains("balancer::access=info"), "{on}");
        assert!(filter(Some("foo=notalevel"), false).is_err());
    }
}
