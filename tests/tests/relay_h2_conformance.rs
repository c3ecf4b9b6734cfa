//! RFC 9113 conformance of the relay, the agent's HTTP/2 data plane, as an
//! HTTP/2 client meets it: httpwg (`cargo install httpwg-cli`, an h2spec
//! replacement; `cargo xtask setup` installs it) runs every one of its cases
//! against the agent's explicit listener (static mode, `--no-ebpf`).
//!
//! Its requests are `POST /` (authority `localhost`). Behind the agent is a
//! backend that answers every request as a gRPC server answers a unary call
//! (`200`, one 64-byte message, `grpc-status: 0`) and checks nothing: what
//! the client sees is what the relay let through, refused or made. (A tonic
//! greeter would refuse some malformed requests itself, hiding whether the
//! relay did, and answers `/` with no message, which the flow-control cases
//! need.)
//!
//! The cases run one at a time (`SEQUENTIAL=1`), each on a new connection;
//! `-v` names each case before it runs, so that a case whose check panicked
//! (httpwg then prints no verdict) is still named.
//!
//! `BALANCER_HTTPWG` points at the httpwg binary (`cargo xtask test` sets it);
//! otherwise `httpwg` from `$CARGO_HOME/bin` or `PATH`.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

mod grpc_support;

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    io::{Read, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use balancer_relay::{
    frame::{self, flags, HeaderBlock, Kind, HEADER_LEN, PREFACE},
    hpack,
};
use bytes::{BufMut, BytesMut};
use grpc_support::{config, ep, free_port, Agent};

/// Cases that do not apply to a gRPC proxy, by the last part of their name
/// (`sends headers frame with te trailers`), with why. Only those: every
/// other case must pass. None so far: the backend answers `POST /` with a
/// message, and httpwg (as a client) tests nothing of server push but its
/// refusal.
const EXCLUDED: &[(&str, &str)] = &[];

/// How long httpwg waits for a frame, and for a connection (ms). Its 250 ms
/// default is short for a loaded 2-core CI machine; a case that waits for a
/// frame which never comes costs this much.
const FRAME_TIMEOUT_MS: u64 = 1000;
const CONNECT_TIMEOUT_MS: u64 = 2000;
/// The whole run, as a backstop.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// What httpwg said of one case.
#[derive(Debug)]
enum Verdict {
    Passed,
    /// The case's check returned an error, or panicked (httpwg then prints
    /// no verdict, only the panic): what it printed.
    Failed(String),
}

fn httpwg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BALANCER_HTTPWG") {
        return PathBuf::from(p);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(bin) = cargo_home.map(|h| h.join("bin/httpwg")).filter(|b| b.exists()) {
        return bin;
    }
    PathBuf::from("httpwg")
}

/// Drops ANSI escape sequences (httpwg's logs and reports are coloured).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

const RUNNING: &str = "🔷 Running test: ";
const PASSED: &str = "✅ Test passed: ";
const SUMMARY: &str = "🚄 Passed ";

/// Every case of a sequential verbose run (`RFC 9113 :: section :: case`)
/// and its verdict.
fn verdicts(log: &str) -> BTreeMap<String, Verdict> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, Vec<&str>)> = None;
    for line in log.lines() {
        if let Some((_, name)) = line.split_once(RUNNING) {
            if let Some((name, lines)) = current.take() {
                out.insert(name, verdict(&lines));
            }
            current = Some((name.trim().to_owned(), Vec::new()));
        } else if let Some((_, lines)) = current.as_mut() {
            lines.push(line);
        }
    }
    if let Some((name, lines)) = current {
        out.insert(name, verdict(&lines));
    }
    out
}

/// One case's verdict from what httpwg printed while it ran. A failure
/// keeps the frames httpwg received (`< ...`) and its error or panic
/// message, without locations and hints.
fn verdict(lines: &[&str]) -> Verdict {
    if lines.iter().any(|l| l.contains(PASSED)) {
        return Verdict::Passed;
    }
    let noise = |l: &str| {
        let t = l.trim();
        t.is_empty()
            || t == "Location:"
            || t.starts_with("Holding ")
            || t.contains(SUMMARY)
            || t.contains("/.cargo/registry/")
            || t.contains("RUST_BACKTRACE")
            || t.contains("Awaiting local set")
            || t.contains("Some tests failed")
    };
    let mut text = Vec::new();
    for l in lines {
        match l.split_once("httpwg: ") {
            // httpwg's frame log: only what it received.
            Some((_, log)) => {
                if let Some(frame) = log.strip_prefix("< ") {
                    text.push(format!("received {frame}"));
                }
            }
            None if !noise(l) => text.push(l.trim().to_owned()),
            None => {}
        }
    }
    Verdict::Failed(text.join("\n"))
}

#[test]
fn relay_passes_every_applicable_httpwg_case() {
    let backend = lenient_backend();
    let (admin, listen) = (free_port(), free_port());
    let agent = Agent::start(
        admin,
        listen,
        &config(admin, "conformance", listen, &[ep(backend, "a")], &[]),
    );

    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("httpwg.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let bin = httpwg_bin();
    let mut child = Command::new(&bin)
        .arg("--address")
        .arg(listen.to_string())
        .arg("--frame-timeout")
        .arg(FRAME_TIMEOUT_MS.to_string())
        .arg("--connect-timeout")
        .arg(CONNECT_TIMEOUT_MS.to_string())
        .arg("--verbose")
        .env("SEQUENTIAL", "1")
        // httpwg's own default, whatever the test runs with: its frame logs.
        .env("RUST_LOG", "info,httpwg=debug")
        .env("RUST_BACKTRACE", "0")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): run `cargo xtask setup` (it installs httpwg-cli), \
                 or point BALANCER_HTTPWG at an httpwg binary",
                bin.display()
            )
        });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "httpwg ran for more than {RUN_LIMIT:?}:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    let elapsed = start.elapsed();
    let log = strip_ansi(&std::fs::read_to_string(&log_path).unwrap());
    let summary = log
        .lines()
        .find(|l| l.contains(SUMMARY))
        .unwrap_or_else(|| panic!("httpwg did not finish its run ({status}):\n{log}"))
        .trim()
        .to_owned();
    let verdicts = verdicts(&log);
    assert!(!verdicts.is_empty(), "httpwg ran no case ({status}):\n{log}");

    // An exclusion must name a case that exists, or it hides nothing.
    let case_names: Vec<&str> = verdicts.keys().map(|k| k.rsplit(" :: ").next().unwrap_or(k)).collect();
    for (name, _) in EXCLUDED {
        assert!(
            case_names.contains(name),
            "excluded case `{name}` is not in httpwg's catalog"
        );
    }
    let excluded = |full: &str| {
        EXCLUDED
            .iter()
            .any(|(name, _)| full.rsplit(" :: ").next() == Some(name))
    };

    let mut report = String::new();
    let mut failed = 0;
    let mut applicable = 0;
    for (name, verdict) in &verdicts {
        if excluded(name) {
            continue;
        }
        applicable += 1;
        if let Verdict::Failed(text) = verdict {
            failed += 1;
            writeln!(report, "\n✗ {name}").unwrap();
            for line in text.lines().take(40) {
                writeln!(report, "    {line}").unwrap();
            }
        }
    }
    eprintln!(
        "httpwg against the relay: {summary}; {} excluded; {failed} of {applicable} applicable cases failed ({elapsed:.1?})",
        verdicts.len() - applicable
    );
    // The agent's log is printed when the assertion fails (its drop).
    let _agent = agent;
    assert!(
        failed == 0,
        "{failed} of {applicable} applicable httpwg cases fail against the relay:{report}"
    );
}

/// The backend: every request gets `200`, one gRPC message of
/// [`MESSAGE_LEN`] bytes and `grpc-status: 0`, whatever it carried. Nothing
/// is validated; only what it must understand to stay in sync is parsed
/// (frames, header blocks, the HPACK table). A thread per connection.
fn lenient_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            thread::spawn(move || {
                let _ = serve(conn);
            });
        }
    });
    addr
}

/// The response message's length, gRPC's 5-byte prefix included.
const MESSAGE_LEN: usize = 64;

/// One connection of the lenient backend, until it closes or a header block
/// does not decode.
fn serve(mut sock: TcpStream) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    frame::put_settings(&mut out, &[]);
    sock.write_all(&out)?;
    let mut buf = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    let mut preface = false;
    let mut dec = hpack::Decoder::new(4096);
    let mut enc = hpack::Encoder::new();
    let mut block = HeaderBlock::new(1 << 20, u32::MAX);
    // Streams whose request has begun, and those still sending.
    let mut seen = HashSet::new();
    let mut open = HashSet::new();
    loop {
        let n = sock.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if !preface {
            if buf.len() < PREFACE.len() {
                continue;
            }
            if !buf.starts_with(PREFACE) {
                return Ok(());
            }
            buf.drain(..PREFACE.len());
            preface = true;
        }
        let mut out = BytesMut::new();
        let mut pos = 0;
        while let Ok(Some(head)) = frame::next(&buf[pos..], frame::MAX_MAX_FRAME_SIZE) {
            let payload = &buf[pos + HEADER_LEN..pos + HEADER_LEN + head.len as usize];
            pos += HEADER_LEN + head.len as usize;
            let stream = head.stream;
            // A complete header block: (END_STREAM, block).
            let mut complete: Option<(bool, Vec<u8>)> = None;
            match head.kind {
                Kind::Settings if !head.has(flags::ACK) => frame::put_settings_ack(&mut out),
                Kind::Ping if !head.has(flags::ACK) => {
                    if let Ok(data) = frame::ping(&head, payload) {
                        frame::put_ping(&mut out, true, data);
                    }
                }
                Kind::Headers => {
                    if let Ok(h) = frame::headers(&head, payload) {
                        let fragment = &payload[h.fragment];
                        if h.end_headers {
                            complete = Some((h.end_stream, fragment.to_vec()));
                        } else {
                            block.clear();
                            let _ = block.start(stream, h.end_stream, fragment);
                        }
                    }
                }
                Kind::Continuation => {
                    if let Ok(Some((end, bytes))) = block.push(&head, payload) {
                        complete = Some((end, bytes.to_vec()));
                    }
                }
                Kind::Data => {
                    // Credit back at once: the relay may send what it likes.
                    if head.len > 0 {
                        frame::put_window_update(&mut out, 0, head.len);
                        if !head.has(flags::END_STREAM) {
                            frame::put_window_update(&mut out, stream, head.len);
                        }
                    }
                    if head.has(flags::END_STREAM) && open.remove(&stream) {
                        respond(&mut enc, &mut out, stream);
                    }
                }
                Kind::RstStream => {
                    open.remove(&stream);
                }
                _ => {}
            }
            if let Some((end, bytes)) = complete {
                if dec.decode(&bytes, usize::MAX, |_| true).is_err() {
                    return Ok(());
                }
                if seen.insert(stream) {
                    open.insert(stream);
                }
                if end && open.remove(&stream) {
                    respond(&mut enc, &mut out, stream);
                }
            }
        }
        buf.drain(..pos);
        if !out.is_empty() {
            sock.write_all(&out)?;
        }
    }
}

/// A unary call's response on `stream`: headers, one message, trailers.
fn respond(enc: &mut hpack::Encoder, out: &mut BytesMut, stream: u32) {
    let mut head = |fields: &[(&[u8], &[u8])], end: bool, out: &mut BytesMut| {
        let at = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        enc.begin(out);
        for (name, value) in fields {
            enc.field(name, value, false, out);
        }
        frame::finish_headers(out, at, stream, end, frame::DEFAULT_MAX_FRAME_SIZE);
    };
    head(
        &[(b":status", b"200"), (b"content-type", b"application/grpc")],
        false,
        out,
    );
    frame::put_data_head(out, stream, MESSAGE_LEN as u32, false);
    out.put_u8(0);
    out.put_u32((MESSAGE_LEN - 5) as u32);
    out.put_slice(&[b'x'; MESSAGE_LEN - 5]);
    head(&[(b"grpc-status", b"0")], true, out);
}
