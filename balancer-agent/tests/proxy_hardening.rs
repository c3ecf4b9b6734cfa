//! Protocol hardening: one test per known HTTP/2 attack on the client side.
//! Each test runs an attacker on a raw TCP connection next to an honest h2
//! client on another one: the attacker gets the reaction RFC 9113 (or the
//! usual mitigation) calls for, the honest client's calls all succeed during
//! and after the attack, and the process (the proxy runs in it) does not grow
//! without bound. Every loop is bounded in count and time.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]

mod support_proxy;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use balancer_agent::model::Policy;
use balancer_relay::{
    frame::{self as wire, Reason},
    hpack,
};
use bytes::BytesMut;
use support_proxy::*;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{tcp::OwnedWriteHalf, TcpListener, TcpStream},
    task::JoinHandle,
};

const CONTINUATION: u8 = 9;
const PROTOCOL_ERROR: u32 = 1;
const FRAME_SIZE_ERROR: u32 = 6;
const REFUSED_STREAM: u32 = 7;
const COMPRESSION_ERROR: u32 = 9;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const MAX_FRAME: usize = 16_384;

const MB: u64 = 1 << 20;
/// Growth of the resident set allowed during one attack: generous, the point
/// is that it does not follow the attack's size.
const MEMORY_SLACK: u64 = 64 * MB;

/// The tests measure the whole process's memory: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---- memory ----

/// VmRSS of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// Samples the resident set every few milliseconds and keeps the peak, so
/// a transient blow-up is seen even when the memory is freed afterwards.
struct Memory {
    base: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Memory {
    fn watch() -> Memory {
        let base = rss();
        let peak = Arc::new(AtomicU64::new(base));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(SeqCst) {
                p.fetch_max(rss(), SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Memory {
            base,
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn growth(&self) -> u64 {
        self.peak.fetch_max(rss(), SeqCst);
        self.peak.load(SeqCst).saturating_sub(self.base)
    }

    fn assert_bounded(&self, what: &str) {
        let g = self.growth();
        eprintln!("{what}: resident set grew by {} MB at its peak", g / MB);
        assert!(
            g < MEMORY_SLACK,
            "{what}: resident set grew by {} MB (limit {} MB)",
            g / MB,
            MEMORY_SLACK / MB
        );
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- the honest client ----

#[derive(Clone, Copy)]
enum Expect {
    /// The request body comes back.
    Echo,
    /// A body of this many bytes comes back.
    Len(usize),
}

/// An h2 client making calls one after another on its own connection until
/// stopped, recording every failure.
struct Honest {
    addr: SocketAddr,
    expect: Expect,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    task: JoinHandle<Vec<String>>,
}

const HONEST_BODY: &[u8] = b"honest";

async fn honest_call(c: &h2::client::SendRequest<bytes::Bytes>, expect: Expect) -> Result<(), String> {
    match tokio::time::timeout(T, call(c, request(SAY_HELLO), HONEST_BODY)).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(e)) => Err(format!("h2 error: {e}")),
        Ok(Ok(a)) => {
            let body_ok = match expect {
                Expect::Echo => a.body == HONEST_BODY,
                Expect::Len(n) => a.body.len() == n,
            };
            if a.grpc_status() == Some(0) && body_ok {
                Ok(())
            } else {
                Err(format!(
                    "grpc-status {:?} `{}`, {} body bytes",
                    a.grpc_status(),
                    a.grpc_message(),
                    a.body.len()
                ))
            }
        }
    }
}

impl Honest {
    /// Starts calling and returns once a few calls went through.
    async fn start(addr: SocketAddr, expect: Expect) -> Honest {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let (s, k) = (stop.clone(), ok.clone());
        let task = tokio::spawn(async move {
            let c = client(addr).await;
            let mut failures = Vec::new();
            let started = Instant::now();
            while !s.load(SeqCst) && failures.len() < 5 && started.elapsed() < Duration::from_secs(120) {
                match honest_call(&c, expect).await {
                    Ok(()) => {
                        k.fetch_add(1, SeqCst);
                    }
                    Err(e) => failures.push(e),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            failures
        });
        let h = Honest {
            addr,
            expect,
            stop,
            ok,
            task,
        };
        h.more_calls(3).await;
        h
    }

    /// Waits for `n` more successful calls.
    async fn more_calls(&self, n: usize) {
        let goal = self.ok.load(SeqCst) + n;
        within("honest calls", async {
            while self.ok.load(SeqCst) < goal && !self.task.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    /// After the attack: a few more calls on the same connection, then the
    /// client stops; no call may have failed. A new connection works too.
    async fn finish(self) {
        self.more_calls(5).await;
        self.stop.store(true, SeqCst);
        let failures = within("honest client stops", self.task).await.unwrap();
        assert!(
            failures.is_empty(),
            "honest calls failed during the attack: {failures:?} ({} succeeded)",
            self.ok.load(SeqCst)
        );
        let c = client(self.addr).await;
        for _ in 0..3 {
            honest_call(&c, self.expect).await.expect("a call on a new connection");
        }
    }
}

// ---- HPACK by hand (no dynamic table unless asked) ----

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(dst: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        dst.push(first | v as u8);
        return;
    }
    dst.push(first | max as u8);
    v -= max;
    while v >= 128 {
        dst.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    dst.push(v as u8);
}

fn hpack_str(dst: &mut Vec<u8>, s: &[u8]) {
    hpack_int(dst, 0, 7, s.len());
    dst.extend_from_slice(s);
}

/// A literal field without indexing, with a literal name.
fn literal(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.push(0x00);
    hpack_str(dst, name);
    hpack_str(dst, value);
}

/// A literal field with incremental indexing (inserted in the peer's table).
fn literal_indexed(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.push(0x40);
    hpack_str(dst, name);
    hpack_str(dst, value);
}

fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in fields {
        literal(&mut b, n.as_bytes(), v.as_bytes());
    }
    b
}

const REQUEST: &[(&str, &str)] = &[
    (":method", "POST"),
    (":scheme", "http"),
    (":path", SAY_HELLO),
    (":authority", "greeter.test"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
];

fn request_block() -> Vec<u8> {
    block(REQUEST)
}

fn headers(dst: &mut BytesMut, stream: u32, block: &[u8], end_stream: bool) {
    wire::put_headers(dst, stream, block, end_stream, MAX_FRAME as u32);
}

fn frames(f: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut b = BytesMut::new();
    f(&mut b);
    b
}

// ---- the attacker: a raw HTTP/2 client that also watches what comes back ----

#[derive(Clone, Debug)]
struct SeenHead {
    stream: u32,
    fields: Vec<(String, String)>,
}

/// Everything the proxy sent to a raw connection.
#[derive(Clone, Debug, Default)]
struct Seen {
    settings: Option<Vec<(u16, u32)>>,
    /// (last stream id, error code).
    goaway: Option<(u32, u32)>,
    /// The first RST_STREAM code per stream.
    resets: BTreeMap<u32, u32>,
    heads: Vec<SeenHead>,
    data: BTreeMap<u32, usize>,
    ended: BTreeSet<u32>,
    hpack_error: bool,
    closed: bool,
}

impl Seen {
    fn field(&self, stream: u32, name: &str) -> Option<&str> {
        self.heads
            .iter()
            .filter(|h| h.stream == stream)
            .flat_map(|h| h.fields.iter())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn status(&self, stream: u32) -> Option<&str> {
        self.field(stream, ":status")
    }

    fn setting(&self, id: u16) -> Option<u32> {
        self.settings
            .as_ref()?
            .iter()
            .rev()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| *v)
    }

    fn data_bytes(&self) -> usize {
        self.data.values().sum()
    }
}

async fn read_raw_frame<R: AsyncRead + Unpin>(r: &mut R) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut h = [0u8; wire::HEADER_LEN];
    r.read_exact(&mut h).await.ok()?;
    let head = wire::Head::parse(&h);
    let mut p = vec![0u8; head.len as usize];
    r.read_exact(&mut p).await.ok()?;
    Some((h[3], head.flags, head.stream, p))
}

/// The field block fragment of a HEADERS frame (padding and priority off).
fn fragment(flags: u8, payload: &[u8]) -> &[u8] {
    let mut p = payload;
    let mut pad = 0;
    if flags & wire::flags::PADDED != 0 {
        pad = usize::from(p[0]);
        p = &p[1..];
    }
    if flags & wire::flags::PRIORITY != 0 {
        p = &p[5..];
    }
    &p[..p.len() - pad]
}

async fn watch<R: AsyncRead + Unpin>(mut r: R, seen: Arc<Mutex<Seen>>) {
    let mut dec = hpack::Decoder::new(4096);
    // An open header block: stream, END_STREAM, bytes.
    let mut open: Option<(u32, bool, Vec<u8>)> = None;
    while let Some((kind, flags, id, payload)) = read_raw_frame(&mut r).await {
        let mut s = seen.lock().unwrap();
        let complete = match kind {
            DATA => {
                *s.data.entry(id).or_default() += payload.len();
                if flags & END_STREAM != 0 {
                    s.ended.insert(id);
                }
                None
            }
            HEADERS => {
                let frag = fragment(flags, &payload).to_vec();
                let end = flags & END_STREAM != 0;
                if flags & END_HEADERS != 0 {
                    Some((id, end, frag))
                } else {
                    open = Some((id, end, frag));
                    None
                }
            }
            CONTINUATION => match open.as_mut() {
                Some((_, _, b)) => {
                    b.extend_from_slice(&payload);
                    if flags & END_HEADERS != 0 {
                        open.take()
                    } else {
                        None
                    }
                }
                None => None,
            },
            RST_STREAM if payload.len() == 4 => {
                let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                s.resets.entry(id).or_insert(code);
                None
            }
            SETTINGS if flags & ACK == 0 && s.settings.is_none() => {
                s.settings = Some(
                    payload
                        .chunks_exact(6)
                        .map(|c| {
                            (
                                u16::from_be_bytes([c[0], c[1]]),
                                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                            )
                        })
                        .collect(),
                );
                None
            }
            GOAWAY if payload.len() >= 8 => {
                let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                s.goaway.get_or_insert((last, code));
                None
            }
            _ => None,
        };
        if let Some((stream, end, b)) = complete {
            let mut fields = Vec::new();
            let r = dec.decode(&b, 1 << 24, |f| {
                fields.push((
                    String::from_utf8_lossy(f.name).into_owned(),
                    String::from_utf8_lossy(f.value).into_owned(),
                ));
                true
            });
            if r.is_err() {
                s.hpack_error = true;
            }
            if end {
                s.ended.insert(stream);
            }
            s.heads.push(SeenHead { stream, fields });
        }
    }
    seen.lock().unwrap().closed = true;
}

struct Raw {
    w: OwnedWriteHalf,
    seen: Arc<Mutex<Seen>>,
    reader: JoinHandle<()>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Raw {
    /// Preface and our SETTINGS; waits for the proxy's SETTINGS and
    /// acknowledges them (so that they are in force).
    async fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> Raw {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (r, mut w) = tcp.into_split();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let reader = tokio::spawn(watch(r, seen.clone()));
        let mut hello = BytesMut::from(&wire::PREFACE[..]);
        wire::put_settings(&mut hello, settings);
        w.write_all(&hello).await.unwrap();
        let mut raw = Raw { w, seen, reader };
        raw.wait("the proxy's SETTINGS", |s| s.settings.is_some()).await;
        raw.send(&frames(wire::put_settings_ack)).await.unwrap();
        raw
    }

    /// Writes `bytes`; an error once the proxy has closed the connection.
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match tokio::time::timeout(T, self.w.write_all(bytes)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `pred` holds; fails the test after [`T`] or when the
    /// connection closed without it.
    async fn wait(&self, what: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + T;
        loop {
            let s = self.seen();
            if pred(&s) {
                return s;
            }
            if s.closed {
                // The last frames may have been recorded just before.
                let s = self.seen();
                assert!(pred(&s), "connection closed before {what}: {}", summary(&s));
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {}",
                summary(&s)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits up to `d` for `pred`; the last snapshot either way.
    async fn wait_up_to(&self, d: Duration, pred: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + d;
        loop {
            let s = self.seen();
            if pred(&s) || s.closed || Instant::now() >= deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn summary(s: &Seen) -> String {
    let resets: Vec<_> = s.resets.iter().take(10).collect();
    format!(
        "goaway {:?}, {} resets (first {:?}), {} header blocks, {} DATA bytes, closed {}",
        s.goaway,
        s.resets.len(),
        resets,
        s.heads.len(),
        s.data_bytes(),
        s.closed
    )
}

fn goaway_code(s: &Seen) -> u32 {
    s.goaway.expect("GOAWAY").1
}

// ---- an endpoint that counts the streams it is sent ----

/// The path of the attackers' requests (the honest client calls SAY_HELLO).
const ATTACK_PATH: &str = "/helloworld.Greeter/Attack";

fn attack_block() -> Vec<u8> {
    let fields: Vec<_> = REQUEST
        .iter()
        .map(|&(n, v)| if n == ":path" { (n, ATTACK_PATH) } else { (n, v) })
        .collect();
    block(&fields)
}

/// A raw HTTP/2 endpoint that counts the streams the proxy opens on it for
/// [`ATTACK_PATH`] (including ones reset at once), and echoes each request
/// that ends with a trailers-terminated gRPC response.
struct CountingEndpoint {
    addr: SocketAddr,
    attack_streams: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for CountingEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(out: &mut BytesMut, stream: u32, body: &[u8]) {
    headers(
        out,
        stream,
        &block(&[(":status", "200"), ("content-type", "application/grpc")]),
        false,
    );
    if !body.is_empty() {
        wire::put_data_head(out, stream, body.len() as u32, false);
        out.extend_from_slice(body);
    }
    headers(out, stream, &block(&[("grpc-status", "0")]), true);
}

async fn counting_endpoint() -> CountingEndpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let attack_streams = Arc::new(AtomicUsize::new(0));
    let count = attack_streams.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.into_split();
                let mut pre = [0u8; 24];
                if r.read_exact(&mut pre).await.is_err() {
                    return;
                }
                if w.write_all(&frames(|o| wire::put_settings(o, &[]))).await.is_err() {
                    return;
                }
                let mut dec = hpack::Decoder::new(4096);
                // A header block split over CONTINUATION frames: stream,
                // END_STREAM, bytes.
                let mut partial: Option<(u32, bool, Vec<u8>)> = None;
                let mut open: HashMap<u32, Vec<u8>> = HashMap::new();
                while let Some((kind, flags, id, payload)) = read_raw_frame(&mut r).await {
                    let mut out = BytesMut::new();
                    let complete = match kind {
                        HEADERS if flags & END_HEADERS != 0 => {
                            Some((id, flags & END_STREAM != 0, fragment(flags, &payload).to_vec()))
                        }
                        HEADERS => {
                            partial = Some((id, flags & END_STREAM != 0, fragment(flags, &payload).to_vec()));
                            None
                        }
                        CONTINUATION => {
                            if let Some((_, _, b)) = partial.as_mut() {
                                b.extend_from_slice(&payload);
                            }
                            if flags & END_HEADERS != 0 {
                                partial.take()
                            } else {
                                None
                            }
                        }
                        SETTINGS if flags & ACK == 0 => {
                            wire::put_settings_ack(&mut out);
                            None
                        }
                        PING if flags & ACK == 0 => {
                            let mut d = [0u8; 8];
                            d.copy_from_slice(&payload[..8]);
                            wire::put_ping(&mut out, true, d);
                            None
                        }
                        DATA => {
                            if !payload.is_empty() {
                                wire::put_window_update(&mut out, 0, payload.len() as u32);
                            }
                            if let Some(body) = open.get_mut(&id) {
                                body.extend_from_slice(&payload);
                            }
                            if flags & END_STREAM != 0 {
                                if let Some(body) = open.remove(&id) {
                                    respond(&mut out, id, &body);
                                }
                            }
                            None
                        }
                        RST_STREAM => {
                            open.remove(&id);
                            None
                        }
                        _ => None,
                    };
                    if let Some((id, end, b)) = complete {
                        let mut attack = false;
                        let _ = dec.decode(&b, 1 << 20, |f| {
                            attack |= f.name == b":path" && f.value == ATTACK_PATH.as_bytes();
                            true
                        });
                        if attack {
                            count.fetch_add(1, SeqCst);
                        }
                        if end {
                            respond(&mut out, id, b"");
                        } else {
                            open.insert(id, Vec::new());
                        }
                    }
                    if !out.is_empty() && w.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    CountingEndpoint {
        addr,
        attack_streams,
        task,
    }
}

/// Waits until `n` stays the same for 300 ms (at most [`T`]).
async fn settled(n: &AtomicUsize) -> usize {
    let deadline = Instant::now() + T;
    let mut last = n.load(SeqCst);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = n.load(SeqCst);
        if now == last || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

async fn in_flight_drains(p: &TestProxy) {
    within("in-flight calls back to zero", async {
        loop {
            if p.table.snapshot().services[0].in_flight() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

// ---- 1. rapid reset (CVE-2023-44487) ----

const RAPID_RESETS: u32 = 20_000;

/// HEADERS + RST_STREAM pairs, `n` of them, from stream 1 on.
fn rapid_reset_burst(n: u32) -> BytesMut {
    let req = attack_block();
    let mut burst = BytesMut::new();
    for i in 0..n {
        let id = 2 * i + 1;
        headers(&mut burst, id, &req, false);
        wire::put_rst_stream(&mut burst, id, Reason::CANCEL);
    }
    burst
}

/// The flood does not turn into as many streams at the endpoint: the proxy
/// cuts the connection off (GOAWAY ENHANCE_YOUR_CALM) or at least never
/// opens upstream what the client reset at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rapid_reset_flood_does_not_reach_the_endpoint() {
    let _one = SERIAL.lock().await;
    let ep = counting_endpoint().await;
    let p = proxy(&model_addrs(&[(ep.addr, "v1")], Policy::RoundRobin), fast_opts()).await;
    let honest = Honest::start(p.addr, Expect::Echo).await;
    let mem = Memory::watch();

    let mut a = Raw::connect(p.addr, &[]).await;
    let _ = a.send(&rapid_reset_burst(RAPID_RESETS)).await;
    let seen = a.wait_up_to(Duration::from_secs(3), |s| s.goaway.is_some()).await;
    honest.more_calls(5).await;
    let upstream = settled(&ep.attack_streams).await;
    eprintln!(
        "rapid reset: {upstream} of {RAPID_RESETS} attack streams reached the endpoint; {}",
        summary(&seen)
    );
    if let Some((_, code)) = seen.goaway {
        assert!(
            code == ENHANCE_YOUR_CALM || code == PROTOCOL_ERROR,
            "GOAWAY code {code}"
        );
    }
    assert!(
        upstream <= (RAPID_RESETS / 10) as usize,
        "{upstream} streams reached the endpoint for {RAPID_RESETS} reset at once ({})",
        summary(&seen)
    );
    mem.assert_bounded("rapid reset");
    drop(a);
    honest.finish().await;
    in_flight_drains(&p).await;
}

/// The same flood against an h2 endpoint (which has its own rapid-reset
/// defence and would GOAWAY a connection that forwards the flood): calls of
/// other clients to that endpoint go on succeeding.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rapid_reset_flood_does_not_break_other_clients_calls() {
    let _one = SERIAL.lock().await;
    let ep = endpoint("a", Behavior::Echo).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let honest = Honest::start(p.addr, Expect::Echo).await;
    let mem = Memory::watch();
    for _ in 0..3 {
        let mut a = Raw::connect(p.addr, &[]).await;
        let _ = a.send(&rapid_reset_burst(RAPID_RESETS)).await;
        a.wait_up_to(Duration::from_secs(2), |s| s.goaway.is_some()).await;
        honest.more_calls(5).await;
    }
    mem.assert_bounded("rapid reset towards an h2 endpoint");
    eprintln!("endpoint connections: {}", ep.conns.load(SeqCst));
    honest.finish().await;
    in_flight_drains(&p).await;
}

// ---- 2. CONTINUATION flood ----

/// HEADERS without END_HEADERS and then CONTINUATION frames of valid fields
/// that never end the block: GOAWAY and the connection closed, long before
/// the attacker runs out of frames, with memory bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continuation_flood_ends_the_connection() {
    let _one = SERIAL.lock().await;
    let ep = endpoint("a", Behavior::Echo).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let honest = Honest::start(p.addr, Expect::Echo).await;
    let mem = Memory::watch();

    // 16 fields of exactly 1024 bytes: each CONTINUATION payload is whole
    // fields, so the endless block stays decodable.
    let mut fields = Vec::new();
    for _ in 0..16 {
        literal(&mut fields, b"x-flood", &[b'f'; 1012]);
    }
    assert_eq!(fields.len(), MAX_FRAME);
    let mut a = Raw::connect(p.addr, &[]).await;
    a.send(&frame(HEADERS, 0, 1, &request_block())).await.unwrap();
    let cont = frame(CONTINUATION, 0, 1, &fields);
    let batch: Vec<u8> = cont.iter().copied().cycle().take(cont.len() * 16).collect();
    const MAX_FRAMES: usize = 10_000;
    let started = Instant::now();
    let mut sent = 0;
    while sent < MAX_FRAMES && started.elapsed() < Duration::from_secs(20) {
        if a.seen().goaway.is_some() || a.send(&batch).await.is_err() {
            break;
        }
        sent += 16;
    }
    let seen = a.wait("GOAWAY", |s| s.goaway.is_some()).await;
    eprintln!(
        "CONTINUATION flood: {sent} frames ({} MB) written; {}",
        sent * MAX_FRAME / MB as usize,
        summary(&seen)
    );
    let code = goaway_code(&seen);
    assert!(
        code == ENHANCE_YOUR_CALM || code == PROTOCOL_ERROR,
        "GOAWAY code {code}"
    );
    a.wait("the connection closed", |s| s.closed).await;
    assert!(sent < MAX_FRAMES, "the proxy took all {sent} CONTINUATION frames");
    no_attack_call_reached(&ep, &honest);
    mem.assert_bounded("CONTINUATION flood");
    honest.finish().await;
}

/// The endpoint saw the honest client's calls and nothing else (its calls
/// are one at a time: at most one is in flight).
fn no_attack_call_reached(ep: &TestEndpoint, h: &Honest) {
    let calls = ep.calls.load(SeqCst);
    let ok = h.ok.load(SeqCst);
    assert!(
        calls <= ok + 1,
        "the endpoint saw {calls} calls, the honest client made {ok}"
    );
}

// ---- 3. HPACK bomb / header list too large ----

/// One 4000-byte field inserted in the dynamic table, then referenced by a
/// one-byte index as often as a frame holds (~12 000 times: ~48 MB decoded):
/// the stream is refused or reset (or the connection ended) without the list
/// ever being built, nothing reaches the endpoint, and a following request
/// on the same connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hpack_bomb_is_refused_without_building_the_list() {
    let _one = SERIAL.lock().await;
    let ep = endpoint("a", Behavior::Echo).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let honest = Honest::start(p.addr, Expect::Echo).await;
    let mem = Memory::watch();

    let mut bomb = request_block();
    literal_indexed(&mut bomb, b"x-bomb", &[b'b'; 4000]);
    // Index 62: the newest dynamic table entry (RFC 7541 §2.3.3).
    let refs = MAX_FRAME - bomb.len();
    bomb.extend(std::iter::repeat_n(0x80 | 62, refs));
    let mut a = Raw::connect(p.addr, &[]).await;
    a.send(&frames(|o| headers(o, 1, &bomb, true))).await.unwrap();
    let seen = a
        .wait("a reaction to the bomb", |s| {
            s.goaway.is_some() || s.resets.contains_key(&1) || s.ended.contains(&1)
        })
        .await;
    eprintln!("HPACK bomb ({refs} references): {}", summary(&seen));
    assert_ne!(seen.status(1), Some("200"), "the bomb was served: {seen:?}");
    match seen.goaway {
        Some((_, code)) => assert!(
            [ENHANCE_YOUR_CALM, PROTOCOL_ERROR, COMPRESSION_ERROR].contains(&code),
            "GOAWAY code {code}"
        ),
        None => {
            // A stream error: RST_STREAM, or a 431 answer (h2 does that).
            let reset = seen.resets.get(&1).copied();
            assert!(
                seen.status(1) == Some("431")
                    || reset.is_some_and(|c| [PROTOCOL_ERROR, REFUSED_STREAM, ENHANCE_YOUR_CALM].contains(&c)),
                "stream 1: reset {reset:?}, status {:?}",
                seen.status(1)
            );
            // The decoder stayed in sync: the next request is served.
            a.send(&frames(|o| headers(o, 3, &request_block(), true)))
                .await
                .unwrap();
            let seen = a.wait("the answer on stream 3", |s| s.ended.contains(&3)).await;
            assert_eq!(seen.status(3), Some("200"), "{seen:?}");
            assert_eq!(seen.field(3, "grpc-status"), Some("0"), "{seen:?}");
        }
    }
    mem.assert_bounded("HPACK bomb");
    no_attack_call_reached_but(&ep, &honest, usize::from(seen.goaway.is_none()));
    honest.finish().await;
}

/// As [`no_attack_call_reached`], allowing `extra` legitimate raw calls.
fn no_attack_call_reached_but(ep: &TestEndpoint, h: &Honest, extra: usize) {
    let calls = ep.calls.load(SeqCst);
    let ok = h.ok.load(SeqCst);
    assert!(
        calls <= ok + 1 + extra,
        "the endpoint saw {calls} calls, the honest client made {ok} (+{extra} good raw ones)"
    );
}

// ---- 4. empty DATA flood ----

/// Thousands of empty DATA frames without END_STREAM on an open stream:
/// GOAWAY ENHANCE_YOUR_CALM.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn empty_data_flood_gets_enhance_your_calm() {
    let _one = SERIAL.lock().await;
    let ep = endpoint("a", Behavior::Echo).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let honest = Honest::start(p.addr, Expect::Echo).await;
    let mem = Memory::watch();

    let mut a = Raw::connect(p.addr, &[]).await;
    const EMPTY: usize = 20_000;
    let flood = frames(|o| {
        headers(o, 1, &request_block(), false);
        for _ in 0..EMPTY {
            wire::put_data_head(o, 1, 0, false);
        }
    });
    let _ = a.send(&flood).await;
    let seen = a.wait("GOAWAY", |s| s.goaway.is_some()).await;
    eprintln!("empty DATA flood: {}", summary(&seen));
    assert_eq!(goaway_code(&seen), ENHANCE_YOUR_CALM, "{}", summary(&seen));
    a.wait("the connection closed", |s| s.closed).await;
    mem.assert_bounded("empty DATA flood");
    honest.finish().await;
    in_flight_drains(&p).await;
}

// ---- 5. control frame floods from a peer that never reads ----

/// Writes `chunk` over and over (up to `count` frames of `per_chunk`, at
/// most 20 s) on a connection whose replies are never read. The proxy must
/// stop reading (or close) instead of queueing replies: memory stays
/// bounded and the honest client keeps working.
async fn never_reading_flood(what: &str, prelude: &[u8], chunk: &[u8], per_chunk: usize, count: usize) {
    let ep = endpoint("a", Behavior::Echo).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let honest = Honest::start(p.addr, Expect::Echo).await;
    let mem = Memory::watch();

    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let mut hello = BytesMut::from(&wire::PREFACE[..]);
    wire::put_settings(&mut hello, &[]);
    hello.extend_from_slice(prelude);
    s.write_all(&hello).await.unwrap();
    let started = Instant::now();
    let mut sent = 0;
    let mut stalled = false;
    let mut closed = false;
    while sent < count && started.elapsed() < Duration::from_secs(20) {
        match tokio::time::timeout(Duration::from_secs(2), s.write_all(chunk)).await {
            Ok(Ok(())) => sent += per_chunk,
            Ok(Err(_)) => {
                closed = true;
                break;
            }
            Err(_) => {
                stalled = true;
                break;
            }
        }
        if sent % (per_chunk * 64) == 0 {
            tokio::task::yield_now().await;
        }
    }
    // What is in the socket buffers gets processed meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!(
        "{what}: {sent} frames written in {:?} (stalled {stalled}, closed {closed})",
        started.elapsed()
    );
    mem.assert_bounded(what);
    honest.finish().await;
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ping_flood_from_a_peer_that_never_reads_stays_bounded() {
    let _one = SERIAL.lock().await;
    const PER: usize = 4096;
    let chunk = frames(|o| {
        for i in 0..PER {
            wire::put_ping(o, false, (i as u64).to_be_bytes());
        }
    });
    // 8M PINGs: 136 MB of acknowledgements if they were all queued.
    never_reading_flood("PING flood", &[], &chunk, PER, 8 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settings_flood_from_a_peer_that_never_reads_stays_bounded() {
    let _one = SERIAL.lock().await;
    const PER: usize = 4096;
    let chunk = frames(|o| {
        for i in 0..PER {
            match i % 64 {
                0 => wire::put_settings(o, &[(wire::SETTINGS_INITIAL_WINDOW_SIZE, 65_536)]),
                1 => wire::put_settings(o, &[(wire::SETTINGS_INITIAL_WINDOW_SIZE, 65_535)]),
                2 => wire::put_settings(o, &[(wire::SETTINGS_HEADER_TABLE_SIZE, 1024)]),
                3 => wire::put_settings(o, &[(wire::SETTINGS_HEADER_TABLE_SIZE, 4096)]),
                _ => wire::put_settings(o, &[]),
            }
        }
    });
    // An open stream, so that window changes have something to act on.
    let prelude = frames(|o| headers(o, 1, &request_block(), false));
    // 16M SETTINGS: 144 MB of acknowledgements if they were all queued.
    never_reading_flood("SETTINGS flood", &prelude, &chunk, PER, 16 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn window_update_flood_from_a_peer_that_never_reads_stays_bounded() {
    let _one = SERIAL.lock().await;
    const PER: usize = 4096;
    let chunk = frames(|o| {
        for i in 0..PER {
            wire::put_window_update(o, if i % 2 == 0 { 0 } else { 1 }, 1);
        }
    });
    let prelude = frames(|o| headers(o, 1, &request_block(), false));
    // 8M WINDOW_UPDATEs of 1: the windows stay far below 2^31 - 1.
    never_reading_flood("WINDOW_UPDATE flood", &prelude, &chunk, PER, 8 << 20).await;
}

// ---- 6. streams beyond SETTINGS_MAX_CONCURRENT_STREAMS ----

/// The proxy announces its stream limit; streams opened beyond it are
/// refused, the ones within it are served, and once some end new ones are
/// accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_beyond_max_concurrent_streams_are_refused() {
    let _one = SERIAL.lock().await;
    const LIMIT: u32 = 32;
    const EXTRA: u32 = 8;
    let ep = endpoint("a", Behavior::Echo).await;
    let mut opts = fast_opts();
    opts.max_concurrent_streams = LIMIT;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), opts).await;
    let honest = Honest::start(p.addr, Expect::Echo).await;

    let mut a = Raw::connect(p.addr, &[]).await;
    assert_eq!(
        a.seen().setting(wire::SETTINGS_MAX_CONCURRENT_STREAMS),
        Some(LIMIT),
        "announced SETTINGS: {:?}",
        a.seen().settings
    );
    // LIMIT + EXTRA streams whose requests never end.
    let req = request_block();
    let ids: Vec<u32> = (0..LIMIT + EXTRA).map(|i| 2 * i + 1).collect();
    a.send(&frames(|o| {
        for &id in &ids {
            headers(o, id, &req, false);
        }
    }))
    .await
    .unwrap();
    let (within_limit, beyond) = ids.split_at(LIMIT as usize);
    let seen = a
        .wait("the extra streams refused", |s| {
            beyond.iter().all(|id| s.resets.contains_key(id))
        })
        .await;
    for id in beyond {
        let code = seen.resets[id];
        assert!(
            code == REFUSED_STREAM || code == PROTOCOL_ERROR,
            "stream {id} reset with {code}"
        );
    }
    // The others are open: response headers from the endpoint, no reset.
    let seen = a
        .wait("responses on the streams within the limit", |s| {
            within_limit.iter().all(|id| s.status(*id).is_some())
        })
        .await;
    assert!(
        within_limit.iter().all(|id| !seen.resets.contains_key(id)),
        "{}",
        summary(&seen)
    );
    assert!(seen.goaway.is_none(), "{}", summary(&seen));
    honest.more_calls(5).await;
    no_attack_call_reached_but(&ep, &honest, LIMIT as usize);

    // Ending two streams makes room for two more.
    let next = ids.last().unwrap() + 2;
    a.send(&frames(|o| {
        for id in &within_limit[..2] {
            wire::put_data_head(o, *id, 0, true);
        }
    }))
    .await
    .unwrap();
    a.wait("two calls done", |s| {
        within_limit[..2].iter().all(|id| s.ended.contains(id))
    })
    .await;
    a.send(&frames(|o| headers(o, next, &req, true))).await.unwrap();
    let seen = a.wait("a new stream served", |s| s.ended.contains(&next)).await;
    assert_eq!(seen.status(next), Some("200"), "{}", summary(&seen));
    assert!(!seen.resets.contains_key(&next), "{}", summary(&seen));
    honest.finish().await;
}

// ---- 7. a client that never opens its window ----

/// What [`big_endpoint`] answers to calls other than [`ATTACK_PATH`].
const SMALL: usize = 100 << 10;

/// An h2 endpoint answering calls to [`ATTACK_PATH`] with `len` bytes and
/// others with [`SMALL`], sent as slices of one shared 64 KiB chunk as its
/// windows allow: it holds next to nothing itself, so what the process
/// holds is the proxy's.
async fn big_endpoint(len: usize) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let chunk = bytes::Bytes::from(vec![7u8; 64 << 10]);
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let chunk = chunk.clone();
                    let len = if req.uri().path() == ATTACK_PATH { len } else { SMALL };
                    tokio::spawn(async move {
                        let head = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap();
                        let Ok(mut send) = respond.send_response(head, false) else {
                            return;
                        };
                        let mut left = len;
                        while left > 0 {
                            let n = left.min(chunk.len());
                            if send_all(&mut send, chunk.slice(..n)).await.is_err() {
                                return;
                            }
                            left -= n;
                        }
                        let mut t = http::HeaderMap::new();
                        t.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let _ = send.send_trailers(t);
                    });
                }
            });
        }
    });
    (addr, task)
}

/// A client announcing SETTINGS_INITIAL_WINDOW_SIZE = 0 that never sends a
/// WINDOW_UPDATE, making calls with large responses: it gets no DATA, the
/// proxy holds at most about a window per stream (not whole responses), and
/// other clients of the same endpoint are not held up. Once that client
/// closes its connection, its calls end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_window_reader_holds_at_most_a_window_per_stream() {
    let _one = SERIAL.lock().await;
    // 16 responses of 8 MB: 128 MB if the proxy took them whole, about
    // 16 x the 1 MB stream window if it holds a window per stream.
    const BIG: usize = 8 << 20;
    const STREAMS: u32 = 16;
    let (ep, _task) = big_endpoint(BIG).await;
    let p = proxy(&model_addrs(&[(ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let honest = Honest::start(p.addr, Expect::Len(SMALL)).await;
    let mem = Memory::watch();

    let mut a = Raw::connect(p.addr, &[(wire::SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    let ids: Vec<u32> = (0..STREAMS).map(|i| 2 * i + 1).collect();
    a.send(&frames(|o| {
        for &id in &ids {
            headers(o, id, &attack_block(), true);
        }
    }))
    .await
    .unwrap();
    a.wait("response headers on every stream", |s| {
        ids.iter().all(|id| s.status(*id).is_some())
    })
    .await;
    // Time for the endpoint to push what the windows let it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    honest.more_calls(3).await;
    let seen = a.seen();
    eprintln!("zero window: {}", summary(&seen));
    assert_eq!(
        seen.data_bytes(),
        0,
        "DATA sent beyond a zero window: {}",
        summary(&seen)
    );
    assert!(seen.goaway.is_none(), "{}", summary(&seen));
    mem.assert_bounded("zero-window reader");
    honest.finish().await;
    // The client goes away (FIN): its stuck calls can never finish, they
    // must end and release what they hold.
    drop(a);
    in_flight_drains(&p).await;
}

// ---- 8. malformed requests (RFC 9113 §8.2, §8.3) ----

/// Each malformed request gets RST_STREAM(PROTOCOL_ERROR) on its stream and
/// never reaches the endpoint; the connection serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_requests_reset_only_their_stream() {
    let _one = SERIAL.lock().await;
    let ep = endpoint("a", Behavior::Echo).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let honest = Honest::start(p.addr, Expect::Echo).await;

    let without_path: Vec<_> = REQUEST.iter().copied().filter(|(n, _)| *n != ":path").collect();
    let with = |extra: (&'static str, &'static str)| {
        let mut f = REQUEST.to_vec();
        f.push(extra);
        f
    };
    let mut pseudo_after_regular: Vec<_> = REQUEST.iter().copied().filter(|(n, _)| *n != ":authority").collect();
    pseudo_after_regular.push((":authority", "greeter.test"));
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("missing :path", without_path),
        ("uppercase header name", with(("X-Upper", "v"))),
        ("connection-specific header", with(("connection", "close"))),
        ("te other than trailers", with(("te", "gzip"))),
        ("pseudo-header after a regular one", pseudo_after_regular),
    ];
    let mut good = 0;
    let mut a = Raw::connect(p.addr, &[]).await;
    let mut id = 1;
    for (what, fields) in &cases {
        a.send(&frames(|o| headers(o, id, &block(fields), true))).await.unwrap();
        let seen = a
            .wait(what, |s| {
                s.resets.contains_key(&id) || s.goaway.is_some() || s.ended.contains(&id)
            })
            .await;
        assert_ne!(seen.status(id), Some("200"), "{what}: served: {}", summary(&seen));
        // A malformed request costs its stream, never the connection.
        assert!(seen.goaway.is_none(), "{what}: GOAWAY {:?}", seen.goaway);
        assert_eq!(
            seen.resets.get(&id),
            Some(&PROTOCOL_ERROR),
            "{what}: {}",
            summary(&seen)
        );
        id += 2;
        // A good request on the same connection is served.
        a.send(&frames(|o| headers(o, id, &request_block(), true)))
            .await
            .unwrap();
        let seen = a.wait("the good request's answer", |s| s.ended.contains(&id)).await;
        assert_eq!(seen.status(id), Some("200"), "after {what}: {}", summary(&seen));
        assert_eq!(seen.field(id, "grpc-status"), Some("0"), "after {what}");
        good += 1;
        id += 2;
    }
    no_attack_call_reached_but(&ep, &honest, good);
    honest.finish().await;
}

// ---- 9. connection errors ----

/// Sends `bad` on a fresh connection: GOAWAY with `code`, then the
/// connection is closed; the honest client is unaffected.
async fn connection_error(what: &str, bad: &[u8], code: u32) {
    let ep = endpoint("a", Behavior::Echo).await;
    let p = proxy(&model(&[(&ep, "v1")], Policy::RoundRobin), fast_opts()).await;
    let honest = Honest::start(p.addr, Expect::Echo).await;
    let mut a = Raw::connect(p.addr, &[]).await;
    let _ = a.send(bad).await;
    let seen = a.wait("GOAWAY", |s| s.goaway.is_some()).await;
    assert_eq!(goaway_code(&seen), code, "{what}: {}", summary(&seen));
    a.wait("the connection closed", |s| s.closed).await;
    no_attack_call_reached(&ep, &honest);
    honest.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_on_stream_zero_is_a_connection_error() {
    let _one = SERIAL.lock().await;
    connection_error("DATA on stream 0", &frame(DATA, 0, 0, b"data"), PROTOCOL_ERROR).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn even_client_stream_id_is_a_connection_error() {
    let _one = SERIAL.lock().await;
    let bad = frames(|o| headers(o, 2, &request_block(), true));
    connection_error("HEADERS on stream 2", &bad, PROTOCOL_ERROR).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frame_over_max_frame_size_is_a_connection_error() {
    let _one = SERIAL.lock().await;
    // A HEADERS frame (it carries a field block: a connection error whatever
    // the stream, RFC 9113 §4.2) one byte over the 16384 we never raised.
    let mut big = request_block();
    // The field's own overhead: type, name length, name, 3-byte value length.
    let pad = MAX_FRAME + 1 - big.len() - (1 + 1 + 5 + 3);
    literal(&mut big, b"x-pad", &vec![b'p'; pad]);
    let bad = frame(HEADERS, END_HEADERS | END_STREAM, 1, &big);
    assert_eq!(bad.len(), wire::HEADER_LEN + MAX_FRAME + 1);
    connection_error("a frame over SETTINGS_MAX_FRAME_SIZE", &bad, FRAME_SIZE_ERROR).await;
}
