//! Test peers for the demultiplexer: h2 endpoints with scripted behaviour,
//! an h2 client, raw-frame helpers and a proxy on an explicit listener.
//! Everything listens on 127.0.0.1 ephemeral ports.

#![allow(dead_code, reason = "shared by several test crates, each using a part of it")]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use balancer_agent::{
    balance::Table,
    model::{Backend, Endpoint, Labels, Model, Policy, Route, RouteMatch, Service, StringMatch},
    proxy::{Proxy, ProxyOptions},
};
use bytes::Bytes;
use h2::{client::SendRequest, Reason, RecvStream, SendStream};
use http::{HeaderMap, Request, Response};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

pub const T: Duration = Duration::from_secs(10);

/// Bounds every await of a test: a hang fails instead of blocking CI.
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(T, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Headers (echoing `x-meta` as `x-meta-echo`, naming the endpoint in
    /// `x-endpoint`), the request body echoed, trailers with grpc-status 0.
    Echo,
    /// RST_STREAM(REFUSED_STREAM) at once.
    Refuse,
    /// Never answers; counts the resets it sees.
    Hang,
    /// RST_STREAM with this reason before any response.
    ResetBeforeHeaders(Reason),
    /// Headers and some data, then RST_STREAM(INTERNAL_ERROR).
    ResetAfterHeaders,
    /// Headers and some data, then drops the whole TCP connection.
    CloseMidStream,
    /// Reads the body slowly, counting bytes; answers the count.
    SlowCount,
    /// Answers a body of this many bytes.
    Big(usize),
    /// Trailers-only response with this grpc-status.
    Status(u16),
    /// Answers after this many milliseconds.
    Delay(u64),
    /// Headers and some data, then waits for a reset (counted).
    HeadersThenHang,
}

pub struct TestEndpoint {
    pub addr: SocketAddr,
    pub name: String,
    /// Streams received.
    pub calls: Arc<AtomicUsize>,
    /// Resets seen on streams it held.
    pub resets: Arc<AtomicUsize>,
    /// Body bytes received (SlowCount).
    pub received: Arc<AtomicU64>,
    /// Connections accepted.
    pub conns: Arc<AtomicUsize>,
    /// `notify_waiters` makes every open connection shut down gracefully
    /// (GOAWAY, in-flight streams finish).
    pub goaway: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn endpoint(name: &str, behavior: Behavior) -> TestEndpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind endpoint");
    let addr = listener.local_addr().expect("addr");
    let calls = Arc::new(AtomicUsize::new(0));
    let resets = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let conns = Arc::new(AtomicUsize::new(0));
    let goaway = Arc::new(tokio::sync::Notify::new());
    let (c, r, rx, cn, ga) = (
        calls.clone(),
        resets.clone(),
        received.clone(),
        conns.clone(),
        goaway.clone(),
    );
    let n = name.to_string();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            cn.fetch_add(1, SeqCst);
            let (c, r, rx, n, ga) = (c.clone(), r.clone(), rx.clone(), n.clone(), ga.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                let (kill_tx, mut kill_rx) = tokio::sync::mpsc::channel::<()>(1);
                loop {
                    tokio::select! {
                        _ = kill_rx.recv() => return,
                        _ = ga.notified() => conn.graceful_shutdown(),
                        next = conn.accept() => match next {
                            Some(Ok((req, respond))) => {
                                c.fetch_add(1, SeqCst);
                                let (r, rx, n, kill) = (r.clone(), rx.clone(), n.clone(), kill_tx.clone());
                                tokio::spawn(async move {
                                    let _ = serve_stream(behavior, &n, req, respond, &r, &rx, kill).await;
                                });
                            }
                            _ => return,
                        }
                    }
                }
            });
        }
    });
    TestEndpoint {
        addr,
        name: name.to_string(),
        calls,
        resets,
        received,
        conns,
        goaway,
        task,
    }
}

fn ok_head(name: &str, req_headers: &HeaderMap) -> Response<()> {
    let mut b = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("x-endpoint", name);
    if let Some(v) = req_headers.get("x-meta") {
        b = b.header("x-meta-echo", v);
    }
    if let Some(v) = req_headers.get("grpc-timeout") {
        b = b.header("x-grpc-timeout-echo", v);
    }
    b.body(()).expect("response")
}

fn ok_trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", "0".parse().expect("v"));
    t.insert("x-trailer", "done".parse().expect("v"));
    t
}

async fn serve_stream(
    behavior: Behavior,
    name: &str,
    req: Request<RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    resets: &AtomicUsize,
    received: &AtomicU64,
    kill: tokio::sync::mpsc::Sender<()>,
) -> Result<(), h2::Error> {
    let (parts, mut body) = req.into_parts();
    match behavior {
        Behavior::Echo => {
            let mut send = respond.send_response(ok_head(name, &parts.headers), false)?;
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                let _ = body.flow_control().release_capacity(chunk.len());
                send_all(&mut send, chunk).await?;
            }
            send.send_trailers(ok_trailers())?;
        }
        Behavior::Refuse => respond.send_reset(Reason::REFUSED_STREAM),
        Behavior::Hang => {
            let _ = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
            resets.fetch_add(1, SeqCst);
        }
        Behavior::ResetBeforeHeaders(reason) => respond.send_reset(reason),
        Behavior::ResetAfterHeaders => {
            let mut send = respond.send_response(ok_head(name, &parts.headers), false)?;
            send.send_data(Bytes::from_static(b"partial"), false)?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            send.send_reset(Reason::INTERNAL_ERROR);
        }
        Behavior::CloseMidStream => {
            let mut send = respond.send_response(ok_head(name, &parts.headers), false)?;
            send.send_data(Bytes::from_static(b"partial"), false)?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = kill.send(()).await;
            // Keep the stream open: the connection dies under it.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(send);
        }
        Behavior::SlowCount => {
            let mut n = 0u64;
            let mut since_pause = 0usize;
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                n += chunk.len() as u64;
                received.fetch_add(chunk.len() as u64, SeqCst);
                since_pause += chunk.len();
                if since_pause >= 1 << 20 {
                    since_pause = 0;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            let mut send = respond.send_response(ok_head(name, &parts.headers), false)?;
            send.send_data(Bytes::from(n.to_string()), false)?;
            send.send_trailers(ok_trailers())?;
        }
        Behavior::Big(len) => {
            let mut send = respond.send_response(ok_head(name, &parts.headers), false)?;
            let data = Bytes::from(vec![7u8; len]);
            send_all(&mut send, data).await?;
            send.send_trailers(ok_trailers())?;
        }
        Behavior::Status(code) => {
            let r = Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .header("grpc-status", code.to_string())
                .header("grpc-message", "from endpoint")
                .body(())
                .expect("response");
            respond.send_response(r, true)?;
        }
        Behavior::HeadersThenHang => {
            let mut send = respond.send_response(ok_head(name, &parts.headers), false)?;
            send.send_data(Bytes::from_static(b"partial"), false)?;
            let _ = std::future::poll_fn(|cx| send.poll_reset(cx)).await;
            resets.fetch_add(1, SeqCst);
        }
        Behavior::Delay(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let mut send = respond.send_response(ok_head(name, &parts.headers), false)?;
            send.send_data(Bytes::from_static(b"late"), false)?;
            send.send_trailers(ok_trailers())?;
        }
    }
    Ok(())
}

/// Sends `data` honouring the peer's flow control window.
pub async fn send_all(send: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let cap = loop {
            let c = send.capacity();
            if c > 0 {
                break c;
            }
            match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Err(h2::Error::from(Reason::CANCEL)),
            }
        };
        let piece = data.split_to(cap.min(data.len()));
        send.send_data(piece, false)?;
    }
    Ok(())
}

pub fn model(endpoints: &[(&TestEndpoint, &str)], policy: Policy) -> Model {
    model_addrs(&endpoints.iter().map(|(e, v)| (e.addr, *v)).collect::<Vec<_>>(), policy)
}

pub fn model_addrs(endpoints: &[(SocketAddr, &str)], policy: Policy) -> Model {
    Model {
        services: vec![std::sync::Arc::new(Service {
            name: "greeter".into(),
            vips: vec!["10.96.0.10:8000".parse().expect("vip")],
            listen: None,
            policy,
            hash_header: None,
            endpoints: endpoints.iter().map(|(a, v)| Endpoint::ready(*a, version(v))).collect(),
            routes: vec![],
            fault: None,
            traffic_distribution: Default::default(),
            internal_traffic_policy: Default::default(),
            ejection: None,
        })],
        ..Model::default()
    }
}

pub fn version(v: &str) -> Labels {
    [("version".to_string(), v.to_string())].into_iter().collect()
}

pub fn split_route(v1: u32, v2: u32) -> Route {
    Route {
        name: Some("split".into()),
        matches: vec![RouteMatch {
            service: Some(StringMatch::Exact("helloworld.Greeter".into())),
            method: None,
            headers: vec![],
        }],
        backends: vec![
            Backend {
                labels: version("v1"),
                weight: v1,
            },
            Backend {
                labels: version("v2"),
                weight: v2,
            },
        ],
        timeout: None,
    }
}

pub struct TestProxy {
    pub addr: SocketAddr,
    pub proxy: Proxy,
    pub table: Arc<Table>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn fast_opts() -> ProxyOptions {
    let mut o = ProxyOptions {
        sniff_timeout: Duration::from_millis(300),
        ..ProxyOptions::default()
    };
    o.pool.connect_timeout = Duration::from_millis(500);
    o
}

pub async fn proxy(model: &Model, opts: ProxyOptions) -> TestProxy {
    let table = Table::new(model);
    let proxy = Proxy::new(Arc::clone(&table), opts);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    let p = proxy.clone();
    let task = tokio::spawn(async move { p.serve_explicit(listener, "greeter".into()).await });
    TestProxy {
        addr,
        proxy,
        table,
        task,
    }
}

pub async fn client(addr: SocketAddr) -> SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.expect("connect to proxy");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

pub fn request(path: &str) -> Request<()> {
    Request::builder()
        .method("POST")
        .uri(format!("http://greeter.test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request")
}

pub const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

/// What a finished call looked like to the client.
#[derive(Debug)]
pub struct Answer {
    pub head: http::response::Parts,
    pub body: Vec<u8>,
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    /// grpc-status from trailers, or from trailers-only headers.
    pub fn grpc_status(&self) -> Option<u16> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.head.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok()?.parse().ok())
    }

    pub fn grpc_message(&self) -> String {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-message"))
            .or_else(|| self.head.headers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    pub fn endpoint(&self) -> String {
        self.head
            .headers
            .get("x-endpoint")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    }
}

/// One call: request with `body`, whole response read.
pub async fn call(send: &SendRequest<Bytes>, req: Request<()>, body: &[u8]) -> Result<Answer, h2::Error> {
    let mut send = send.clone().ready().await?;
    let (resp, mut stream) = send.send_request(req, body.is_empty())?;
    if !body.is_empty() {
        send_all(&mut stream, Bytes::copy_from_slice(body)).await?;
        stream.send_data(Bytes::new(), true)?;
    }
    let resp = resp.await?;
    let (head, mut recv) = resp.into_parts();
    let mut out = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await?;
    Ok(Answer {
        head,
        body: out,
        trailers,
    })
}

/// Counts calls per `x-endpoint` over `n` unary calls on one connection.
pub async fn spread(send: &SendRequest<Bytes>, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let a = within("call", call(send, request(SAY_HELLO), b"hi"))
            .await
            .expect("call");
        assert_eq!(a.grpc_status(), Some(0), "{a:?}");
        *m.entry(a.endpoint()).or_default() += 1;
    }
    m
}

/// A port nothing listens on (bound, then released).
pub async fn closed_port() -> SocketAddr {
    balancer_testing::port::free_port().expect("free port")
}

// ---- raw HTTP/2 frames ----

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const END_STREAM: u8 = 1;
pub const ACK: u8 = 1;
pub const END_HEADERS: u8 = 4;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn goaway(last: u32, code: u32) -> Vec<u8> {
    let mut p = last.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    frame(GOAWAY, 0, 0, &p)
}

/// Reads one frame: (type, flags, stream, payload); None at EOF or error.
pub async fn read_frame(s: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut h = [0u8; 9];
    s.read_exact(&mut h).await.ok()?;
    let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).await.ok()?;
    let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    Some((h[3], h[4], id, p))
}

/// Reads frames until one of `kind` (returned) or EOF (None).
pub async fn read_until(s: &mut TcpStream, kind: u8) -> Option<(u8, u8, u32, Vec<u8>)> {
    loop {
        let f = read_frame(s).await?;
        if f.0 == kind {
            return Some(f);
        }
    }
}

/// Connects to the proxy as a raw HTTP/2 client: preface and empty SETTINGS.
pub async fn raw_client(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(PREFACE).await.expect("preface");
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.expect("settings");
    s
}

/// A raw endpoint that answers every HEADERS it gets with
/// GOAWAY(last_stream_id = 0, NO_ERROR): the stream was never handled.
pub async fn goaway_endpoint() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    scripted_endpoint(|_| goaway(0, 0)).await
}

/// A raw HTTP/2 endpoint: SETTINGS and PING are answered properly, every
/// HEADERS frame gets `reply(stream_id)` written back verbatim.
pub async fn scripted_endpoint(
    reply: impl Fn(u32) -> Vec<u8> + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let e = scripted_endpoint_with(reply, usize::MAX).await;
    (e.addr, e.seen, e.task)
}

/// A raw endpoint of [`scripted_endpoint_with`].
pub struct ScriptedEndpoint {
    pub addr: SocketAddr,
    /// HEADERS frames received.
    pub seen: Arc<AtomicUsize>,
    /// Connections the proxy closed.
    pub closed: Arc<AtomicUsize>,
    pub task: tokio::task::JoinHandle<()>,
}

/// As [`scripted_endpoint`], answering only the first `pings` PINGs of each
/// connection (a hung endpoint after that).
pub async fn scripted_endpoint_with(
    reply: impl Fn(u32) -> Vec<u8> + Send + Sync + 'static,
    pings: usize,
) -> ScriptedEndpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (s2, c2) = (seen.clone(), closed.clone());
    let reply = Arc::new(reply);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let (seen, closed) = (s2.clone(), c2.clone());
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut pre = [0u8; 24];
                if tcp.read_exact(&mut pre).await.is_err() {
                    return;
                }
                let _ = tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await;
                let mut answered = 0;
                while let Some((kind, flags, id, payload)) = read_frame(&mut tcp).await {
                    match kind {
                        PING if flags & ACK == 0 && answered < pings => {
                            answered += 1;
                            let _ = tcp.write_all(&frame(PING, ACK, 0, &payload)).await;
                        }
                        SETTINGS if flags & ACK == 0 => {
                            let _ = tcp.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
                        }
                        HEADERS => {
                            seen.fetch_add(1, SeqCst);
                            let _ = tcp.write_all(&reply(id)).await;
                        }
                        _ => {}
                    }
                }
                closed.fetch_add(1, SeqCst);
            });
        }
    });
    ScriptedEndpoint {
        addr,
        seen,
        closed,
        task,
    }
}

/// HPACK for a minimal request: `:method POST`, `:scheme http`, `:path /`,
/// `:authority a` (static table indices and one literal).
pub const GOOD_REQUEST_HPACK: &[u8] = &[0x83, 0x86, 0x84, 0x41, 0x01, b'a'];
/// HPACK without `:path`: a malformed request.
pub const NO_PATH_HPACK: &[u8] = &[0x83, 0x86, 0x41, 0x01, b'a'];
/// An indexed header field pointing far outside any table.
pub const BAD_HPACK: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0x0f];

/// A stand-in for the kernel side: every connection "was redirected" to
/// `vip` (or to nothing), and fast-path exits are counted.
pub struct FakeRedirects {
    pub vip: Option<SocketAddr>,
    pub left_fast_path: AtomicUsize,
}

impl balancer_agent::redirect::Redirects for FakeRedirects {
    fn original_dst(&self, _accepted: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Option<SocketAddr>> {
        Ok(self.vip)
    }

    fn leave_fast_path(&self, _accepted: std::os::fd::BorrowedFd<'_>) {
        self.left_fast_path.fetch_add(1, SeqCst);
    }
}

/// A proxy serving kernel-redirected connections through `redirects`.
pub async fn redirected_proxy(model: &Model, opts: ProxyOptions, redirects: Arc<FakeRedirects>) -> TestProxy {
    let table = Table::new(model);
    let proxy = Proxy::new(Arc::clone(&table), opts);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    let p = proxy.clone();
    let task = tokio::spawn(async move { p.serve_redirected(listener, redirects).await });
    TestProxy {
        addr,
        proxy,
        table,
        task,
    }
}

/// A plain TCP endpoint: optionally greets first, then echoes bytes.
pub async fn tcp_echo(greeting: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if tcp.write_all(greeting).await.is_err() {
                    return;
                }
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, task)
}
