//! Static mode: the node's settings and the balanced [`Model`] from a YAML
//! file, reloaded when it changes.
//!
//! ```yaml
//! listen: 10.250.0.1:15001        # where kernel-redirected connections arrive
//! admin: 127.0.0.1:15000          # default 127.0.0.1:15000
//! attach_cgroup: /sys/fs/cgroup/unified/balancer
//! fast_path: true                 # sk_msg fast path (default true)
//! enroll: [ /sys/fs/cgroup/unified/balancer/client ]
//! zone: zone-a                    # the agent's zone and node, for locality
//! node: node-1
//! tracing:                        # optional: a span per call, exported over OTLP/HTTP
//!   otlp_endpoint: http://127.0.0.1:4318   # the collector (path default /v1/traces)
//!   sampling: 0.1                 # share of new traces kept (default 1); a client's decision wins
//!   service_name: balancer        # the spans' service.name (default balancer)
//! services:
//!   - name: greeter
//!     vip: 10.96.0.10:8000        # and/or `vips: [..]`
//!     listen: 127.0.0.1:18000     # optional explicit listener
//!     policy: round-robin         # round-robin | least-request | peak-ewma | ring-hash
//!     # hash_header: x-user-id    # with ring-hash: the header that picks the endpoint
//!     traffic_distribution: PreferClose  # optional: node, then zone, then the rest
//!     internal_traffic_policy: Local     # optional: this node's endpoints only
//!     endpoints:
//!       - { address: 127.0.0.1:50051, labels: { version: v1 }, zone: zone-a, node: node-1 }
//!       - { address: 127.0.0.1:50052, labels: { version: v2 }, state: draining }
//!     routes:                     # first match wins; no route = all endpoints
//!       - matches:
//!           - service: helloworld.Greeter           # a string is an exact match
//!             method: { regex: "Say.*" }            # or { exact: ... }
//!             headers: [ { name: x-canary, value: "1" } ]   # or { name, regex }
//!         backends:
//!           - { labels: { version: v1 }, weight: 90 }
//!           - { labels: { version: v2 }, weight: 10 }
//!     fault:                      # optional: injected faults
//!       delay: { duration: 500ms, percent: 10 }
//!       abort: { status: UNAVAILABLE, percent: 5, message: "injected" }
//! gateways: []                    # listeners for clients outside (see [`gateway`])
//! ```
//!
//! Every error is one line naming the file, the key and the line:
//! `greeter.yaml: services[0].endpoints[1].address: invalid socket address "x" ... at line 12 column 20`.

mod filters;
mod gateway;
mod position;
mod schema;
mod watch;

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

pub use self::watch::{watch, ReloadStats, Watched};
use self::{position::PositionIndex, schema::File};
use crate::model::Model;

/// Settings of the node agent itself (not reloadable: a change takes effect
/// at the next start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Where kernel-redirected connections arrive.
    pub listen: Option<SocketAddr>,
    /// The admin server (metrics, readiness); default 127.0.0.1:15000.
    pub admin: SocketAddr,
    /// The cgroup v2 directory the programs attach to (default: the root).
    pub attach_cgroup: Option<PathBuf>,
    /// Put redirected connections on the sk_msg fast path (default true).
    pub fast_path: bool,
    /// Traces exported over OTLP (default off).
    pub tracing: Option<crate::traces::TracingConfig>,
}

/// One successfully parsed and validated file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub node: NodeConfig,
    pub model: Model,
    /// 1 for the file read at start, +1 for each applied reload.
    pub generation: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Invalid),
}

/// What is wrong in a file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub file: String,
    /// Key path such as `services[0].endpoints[1].address`; empty for the
    /// document itself.
    pub path: String,
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, " at line {line} column {column}")?;
        }
        Ok(())
    }
}

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&text, &file)
}

/// Parses and validates `text`; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Loaded, ConfigError> {
    // A file caught half-written (truncated, then written) must not wipe
    // every service.
    let blank = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    if blank {
        return Err(ConfigError::Invalid(Invalid {
            file: file.to_owned(),
            path: String::new(),
            message: "the file is empty (write `services: []` for no services)".to_owned(),
            line: None,
            column: None,
        }));
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let parsed: Result<File, _> = serde_path_to_error::deserialize(de);
    let raw = match parsed {
        Ok(raw) => raw,
        Err(e) => return Err(ConfigError::Invalid(from_serde(file, text, e))),
    };
    let base = Path::new(file).parent().unwrap_or(Path::new(""));
    let (node, model) = raw.into_config(base).map_err(|e| {
        let pos = PositionIndex::new(text).find(&e.path);
        ConfigError::Invalid(Invalid {
            file: file.to_owned(),
            path: e.path,
            message: e.message,
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
        })
    })?;
    Ok(Loaded {
        node,
        model,
        generation: 1,
    })
}

fn from_serde(file: &str, text: &str, e: serde_path_to_error::Error<serde_yaml_ng::Error>) -> Invalid {
    let path = e.path().to_string();
    let path = if path == "." { String::new() } else { path };
    let inner = e.into_inner();
    let mut message = inner.to_string();
    let (mut line, mut column) = (None, None);
    if let Some(loc) = inner.location() {
        // The message ends with the location; it is printed once, at the end.
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_owned();
        }
        (line, column) = (Some(loc.line()), Some(loc.column()));
    } else if let Some(pos) = PositionIndex::new(text).find(&path) {
        (line, column) = (Some(pos.line), Some(pos.column));
    }
    // serde_yaml_ng starts some messages with its own (coarser) path.
    if let Some((head, rest)) = message.split_once(": ") {
        if !head.contains(' ') && path.starts_with(head) {
            message = rest.to_owned();
        }
    }
    // One line, whatever the parser said.
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    Invalid {
        file: file.to_owned(),
        path,
        message,
        line,
        column,
    }
}

#[cfg(test)]
mod tests;
