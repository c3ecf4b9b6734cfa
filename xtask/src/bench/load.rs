//! The load: h2load making unary `SayHello` calls with a real gRPC body, its
//! per-request log turned into percentiles, and a gRPC-level check with
//! nghttp (h2load counts an HTTP 200 that carries a gRPC error as success).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context};

use super::procs::Proc;

/// `helloworld.HelloRequest{name: "world"}` as one gRPC message: not
/// compressed, 7 bytes long.
pub const HELLO_BODY: [u8; 12] = [0, 0, 0, 0, 7, 0x0a, 5, b'w', b'o', b'r', b'l', b'd'];
pub const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

/// How one run loads its path.
pub struct Load<'a> {
    pub calls: u64,
    pub connections: u32,
    pub streams: u32,
    /// `host:port` the client dials.
    pub target: &'a str,
    pub body: &'a Path,
    /// Where the per-request log and h2load's output go.
    pub dir: &'a Path,
}

impl Load<'_> {
    /// h2load's arguments for SayHello calls; `log` adds the per-request log.
    pub fn args(&self, log: bool) -> Vec<String> {
        self.args_for(SAY_HELLO, log)
    }

    /// h2load's arguments for calls of `method` (a `/package.Service/Method` path).
    pub fn args_for(&self, method: &str, log: bool) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-n".into(),
            self.calls.to_string(),
            "-c".into(),
            self.connections.to_string(),
            "-m".into(),
            self.streams.to_string(),
            "-t".into(),
            "1".into(),
            "-d".into(),
            self.body.display().to_string(),
            "-H".into(),
            "content-type: application/grpc".into(),
            "-H".into(),
            "te: trailers".into(),
        ];
        if log {
            a.push("--log-file".into());
            a.push(self.log_path().display().to_string());
        }
        a.push(format!("http://{}{method}", self.target));
        a
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("h2load.log")
    }

    /// Runs h2load (`cmd` already holds the program, maybe wrapped to run in
    /// a pod) and reads its results.
    pub fn run(&self, cmd: &mut Command, limit: Duration) -> anyhow::Result<Measured> {
        let _ = fs::remove_file(self.log_path());
        let out_path = self.dir.join("h2load.out");
        let out = fs::File::create(&out_path)?;
        cmd.stdout(out).stderr(Stdio::null()).stdin(Stdio::null());
        let mut h2load = Proc::spawn("h2load", cmd)?;
        let (ok, client_cpu) = h2load.wait_rusage(limit)?;
        let text = fs::read_to_string(&out_path).unwrap_or_default();
        let summary = Summary::parse(&text)
            .with_context(|| format!("bench: cannot read h2load's summary (in {})", out_path.display()))?;
        if !ok && summary.succeeded == 0 {
            bail!("bench: h2load failed: {}", text.trim());
        }
        let mut latencies = read_log(&self.log_path())?;
        let pct = Percentiles::of(&mut latencies);
        Ok(Measured {
            succeeded: summary.succeeded,
            failed: self.calls.saturating_sub(summary.succeeded),
            secs: summary.secs,
            calls_per_sec: summary.succeeded as f64 / summary.secs.max(1e-9),
            pct,
            client_cpu,
        })
    }
}

/// What h2load measured in one run.
#[derive(Clone, Debug)]
pub struct Measured {
    pub succeeded: u64,
    pub failed: u64,
    pub secs: f64,
    pub calls_per_sec: f64,
    pub pct: Percentiles,
    pub client_cpu: f64,
}

#[derive(Debug, PartialEq)]
struct Summary {
    succeeded: u64,
    secs: f64,
}

impl Summary {
    /// Reads "finished in 2.80s, …" and "requests: N total, …, N succeeded".
    fn parse(text: &str) -> Option<Summary> {
        let mut secs = None;
        let mut succeeded = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("finished in ") {
                secs = parse_duration(rest.split(',').next()?.trim());
            }
            if let Some(rest) = line.strip_prefix("requests: ") {
                succeeded = rest
                    .split(',')
                    .find_map(|f| f.trim().strip_suffix(" succeeded")?.trim().parse().ok());
            }
        }
        Some(Summary {
            succeeded: succeeded?,
            secs: secs?,
        })
    }
}

/// "2.80s", "780.45ms", "950us" → seconds.
fn parse_duration(s: &str) -> Option<f64> {
    for (suffix, scale) in [("ms", 1e-3), ("us", 1e-6), ("s", 1.0)] {
        if let Some(v) = s.strip_suffix(suffix) {
            return v.parse::<f64>().ok().map(|v| v * scale);
        }
    }
    None
}

/// h2load's `--log-file`: one line per request, tab-separated: start time
/// (µs since the epoch), HTTP status, µs until the end of the response.
/// Returns the latencies of the requests answered 200, in µs.
fn read_log(path: &Path) -> anyhow::Result<Vec<u64>> {
    let text = fs::read_to_string(path).with_context(|| format!("bench: h2load wrote no log at {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (_, status, micros) = (f.next()?, f.next()?, f.next()?);
            (status.trim() == "200").then(|| micros.trim().parse().ok())?
        })
        .collect())
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of latencies in µs.
    pub fn of(micros: &mut [u64]) -> Self {
        if micros.is_empty() {
            return Percentiles::default();
        }
        micros.sort_unstable();
        let at = |p: f64| {
            let rank = ((p / 100.0) * micros.len() as f64).ceil() as usize;
            micros[rank.clamp(1, micros.len()) - 1] as f64 / 1000.0
        };
        Percentiles {
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
        }
    }
}

/// A sample of calls over one HTTP/2 connection, checked at the gRPC level.
#[derive(Clone, Debug, Default)]
pub struct GrpcSample {
    pub calls: u64,
    /// Calls whose trailers said `grpc-status: 0`.
    pub ok: u64,
    /// Other statuses seen (status → count); a missing status counts as "none".
    pub errors: BTreeMap<String, u64>,
    /// Serving backend → calls (the greeter names itself in every reply).
    pub backends: BTreeMap<String, u64>,
}

/// Makes `calls` SayHello calls with nghttp over one connection (`wrap`
/// turns the nghttp command line into the command to run, e.g. inside a
/// pod) and checks every grpc-status; a second pass reads the replies.
pub fn grpc_sample(
    wrap: &dyn Fn(&[String]) -> anyhow::Result<Command>,
    target: &str,
    body: &Path,
    calls: u64,
) -> anyhow::Result<GrpcSample> {
    let base = |verbose: bool| {
        let mut a: Vec<String> = vec![
            "-m".into(),
            calls.to_string(),
            "-d".into(),
            body.display().to_string(),
            "-H".into(),
            "content-type: application/grpc".into(),
            "-H".into(),
            "te: trailers".into(),
            "-t".into(),
            "20".into(),
        ];
        if verbose {
            a.push("-v".into());
            a.push("-n".into());
        }
        a.push(format!("http://{target}{SAY_HELLO}"));
        a
    };
    let verbose = wrap(&base(true))?
        .stderr(Stdio::null())
        .output()
        .context("bench: cannot run nghttp")?;
    let statuses = grpc_statuses(&String::from_utf8_lossy(&verbose.stdout));
    let mut sample = GrpcSample {
        calls,
        ..Default::default()
    };
    for s in &statuses {
        if s == "0" {
            sample.ok += 1;
        } else {
            *sample.errors.entry(s.clone()).or_default() += 1;
        }
    }
    let missing = calls.saturating_sub(statuses.len() as u64);
    if missing > 0 {
        *sample.errors.entry("none".into()).or_default() += missing;
    }
    let bodies = wrap(&base(false))?
        .stderr(Stdio::null())
        .output()
        .context("bench: cannot run nghttp")?;
    for m in grpc_messages(&bodies.stdout) {
        let backend = proto_string(m, 2).unwrap_or_else(|| "?".into());
        *sample.backends.entry(backend).or_default() += 1;
    }
    Ok(sample)
}

/// The values of every `grpc-status` header nghttp -v printed.
fn grpc_statuses(verbose: &str) -> Vec<String> {
    verbose
        .lines()
        .filter_map(|l| {
            let (_, v) = l.split_once("grpc-status: ")?;
            Some(v.trim().to_owned())
        })
        .collect()
}

/// Every gRPC message in `bytes` (uncompressed length-prefixed frames).
fn grpc_messages(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        let Some(msg) = bytes.get(5..5 + len) else {
            break;
        };
        out.push(msg);
        bytes = &bytes[5 + len..];
    }
    out
}

/// The string field `field` of a protobuf message, if it has one
/// (HelloReply: 1 = message, 2 = backend).
fn proto_string(mut msg: &[u8], field: u64) -> Option<String> {
    while !msg.is_empty() {
        let (key, used) = varint(msg)?;
        msg = &msg[used..];
        let value_len = match key & 7 {
            0 => varint(msg)?.1,
            1 => 8,
            5 => 4,
            2 => {
                let (len, used) = varint(msg)?;
                let value = msg.get(used..used + len as usize)?;
                if key >> 3 == field {
                    return Some(String::from_utf8_lossy(value).into_owned());
                }
                used + len as usize
            }
            _ => return None,
        };
        msg = msg.get(value_len..)?;
    }
    None
}

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_h2load_summary() {
        let text = "finished in 2.80s, 71464.29 req/s, 2.59MB/s\n\
                    requests: 200000 total, 200000 started, 200000 done, 199990 succeeded, 10 failed, 10 errored, 0 timeout\n";
        assert_eq!(
            Summary::parse(text),
            Some(Summary {
                succeeded: 199_990,
                secs: 2.80
            })
        );
        let ms = "finished in 780.50ms, 100 req/s\nrequests: 78 total, 78 started, 78 done, 78 succeeded, 0 failed\n";
        assert_eq!(Summary::parse(ms).map(|s| s.secs), Some(0.7805));
        assert_eq!(Summary::parse("h2load: connect failed\n"), None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().map(|i| i * 1000).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.p50, p.p90, p.p99), (50.0, 90.0, 99.0));
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
    }

    #[test]
    fn log_keeps_answered_calls_only() {
        let dir = std::env::temp_dir().join(format!("bench-log-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let log = dir.join("h2load.log");
        fs::write(
            &log,
            "1700000000000000\t200\t1500\n1700000000000001\t-1\t9\n1700000000000002\t200\t2500\n",
        )
        .expect("write log");
        assert_eq!(read_log(&log).expect("log"), vec![1500, 2500]);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn decodes_grpc_replies_and_statuses() {
        let mut b = Vec::new();
        for backend in ["greeter-1", "greeter-2"] {
            // HelloReply{message: "Hello world!", backend}
            let mut msg = vec![0x0a, 12];
            msg.extend_from_slice(b"Hello world!");
            msg.extend_from_slice(&[0x12, backend.len() as u8]);
            msg.extend_from_slice(backend.as_bytes());
            b.push(0);
            b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            b.extend_from_slice(&msg);
        }
        let msgs = grpc_messages(&b);
        let field = |f| msgs.iter().map(|m| proto_string(m, f)).collect::<Vec<_>>();
        assert_eq!(field(2), vec![Some("greeter-1".into()), Some("greeter-2".into())]);
        assert_eq!(field(1), vec![Some("Hello world!".into()), Some("Hello world!".into())]);
        assert_eq!(field(3), vec![None, None]);
        // A varint field before the string is skipped.
        assert_eq!(
            proto_string(&[0x08, 0x96, 0x01, 0x12, 1, b'x'], 2).as_deref(),
            Some("x")
        );
        // A truncated frame is not read past its end.
        assert_eq!(grpc_messages(&b[..b.len() - 3]).len(), 1);
        let v = "[  0.004] recv (stream_id=13) grpc-status: 0\n[  0.005] recv (stream_id=15) grpc-status: 14\n";
        assert_eq!(grpc_statuses(v), vec!["0", "14"]);
    }

    #[test]
    fn the_body_is_a_hello_request() {
        assert_eq!(HELLO_BODY.len(), 12);
        assert_eq!(&HELLO_BODY[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(proto_string(&HELLO_BODY[5..], 1).as_deref(), Some("world"));
    }
}
