//! The Greeter and Echo services, and an in-process server for tests.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use tokio::{net::TcpListener, sync::oneshot};
use tokio_stream::{wrappers::TcpListenerStream, Stream, StreamExt};
use tonic::{
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::Server,
    Code, Request, Response, Status, Streaming,
};

use crate::{
    pb::{
        echo::{
            echo_server::{Echo, EchoServer},
            EchoReply, EchoRequest, SleepRequest, StatusRequest, StreamRequest,
        },
        helloworld::{
            greeter_server::{Greeter, GreeterServer},
            HelloReply, HelloRequest,
        },
    },
    MAX_MESSAGE,
};

/// What a server counts.
#[derive(Debug, Default)]
pub struct Stats {
    calls: AtomicU64,
    in_flight: AtomicU64,
}

impl Stats {
    /// Calls started on this server (every method).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Calls started and not yet finished.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn start(self: &Arc<Self>) -> InFlight {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// Counts a call in flight until dropped (also when the call is cancelled).
struct InFlight(Arc<Stats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Both services, named after the backend they run as.
#[derive(Debug, Clone)]
pub struct Backend {
    name: Arc<str>,
    stats: Arc<Stats>,
}

impl Backend {
    pub fn new(name: &str) -> Self {
        Backend {
            name: name.into(),
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Serves both services on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let greeter = GreeterServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let echo = EchoServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Server::builder()
            .add_service(greeter)
            .add_service(echo)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
    }

    fn reply(&self, payload: Vec<u8>, message: String) -> EchoReply {
        EchoReply {
            payload,
            message,
            backend: self.name.to_string(),
            ..EchoReply::default()
        }
    }
}

/// The request's `x-*` ASCII metadata, and its W3C trace context
/// (`traceparent`, `tracestate`).
fn x_metadata(md: &MetadataMap) -> HashMap<String, String> {
    let echoed = |k: &str| k.starts_with("x-") || k == "traceparent" || k == "tracestate";
    md.iter()
        .filter_map(|kv| match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) if echoed(k.as_str()) => {
                Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned()))
            }
            _ => None,
        })
        .collect()
}

/// Puts `pairs` into `md`, skipping what is not valid metadata.
fn insert_all(md: &mut MetadataMap, pairs: &HashMap<String, String>) {
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(k.as_bytes()),
            MetadataValue::try_from(v.as_str()),
        ) {
            md.insert(k, v);
        }
    }
}

fn with_echoed_headers<T>(reply: T, md: &HashMap<String, String>) -> Response<T> {
    let mut resp = Response::new(reply);
    insert_all(resp.metadata_mut(), md);
    resp
}

#[tonic::async_trait]
impl Greeter for Backend {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let _call = self.stats.start();
        let name = req.into_inner().name;
        Ok(Response::new(HelloReply {
            message: format!("Hello {name}!"),
            backend: self.name.to_string(),
        }))
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Backend {
    async fn unary(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let _call = self.stats.start();
        let md = x_metadata(req.metadata());
        let r = req.into_inner();
        let payload = if r.reply_size > 0 {
            vec![b'e'; r.reply_size as usize]
        } else {
            r.payload
        };
        let mut reply = self.reply(payload, r.message);
        reply.metadata = md.clone();
        Ok(with_echoed_headers(reply, &md))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(&self, req: Request<StreamRequest>) -> Result<Response<Self::ServerStreamStream>, Status> {
        let call = self.stats.start();
        let r = req.into_inner();
        let backend = self.clone();
        let interval = Duration::from_millis(u64::from(r.interval_ms));
        let stream = async_stream(r.count, move |i| {
            let backend = backend.clone();
            let size = r.size as usize;
            async move {
                if i > 0 && !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                let mut reply = backend.reply(vec![b's'; size], format!("reply {i}"));
                reply.count = u64::from(i);
                reply
            }
        })
        .map(move |r| {
            let _keep = &call;
            Ok(r)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn client_stream(&self, req: Request<Streaming<EchoRequest>>) -> Result<Response<EchoReply>, Status> {
        let _call = self.stats.start();
        let md = x_metadata(req.metadata());
        let mut stream = req.into_inner();
        let (mut count, mut bytes) = (0u64, 0u64);
        while let Some(msg) = stream.next().await {
            let msg = msg?;
            count += 1;
            bytes += msg.payload.len() as u64;
        }
        let mut reply = self.reply(Vec::new(), format!("{count} messages"));
        reply.count = count;
        reply.bytes = bytes;
        reply.metadata = md.clone();
        Ok(with_echoed_headers(reply, &md))
    }

    type BidiStreamStream = ReplyStream;

    async fn bidi_stream(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::BidiStreamStream>, Status> {
        let call = self.stats.start();
        let backend = self.clone();
        let mut n = 0u64;
        let stream = req.into_inner().map(move |msg| {
            let _keep = &call;
            let msg = msg?;
            let mut reply = backend.reply(msg.payload, msg.message);
            reply.count = n;
            n += 1;
            Ok(reply)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fail(&self, req: Request<StatusRequest>) -> Result<Response<EchoReply>, Status> {
        let _call = self.stats.start();
        let mut trailers = x_metadata(req.metadata());
        let r = req.into_inner();
        trailers.extend(r.trailers);
        let mut md = MetadataMap::new();
        insert_all(&mut md, &trailers);
        let code = Code::from_i32(r.code);
        if code == Code::Ok {
            // Trailing metadata of a successful call.
            let mut resp = Response::new(self.reply(Vec::new(), r.message));
            *resp.metadata_mut() = md;
            return Ok(resp);
        }
        Err(Status::with_metadata(code, r.message, md))
    }

    async fn sleep(&self, req: Request<SleepRequest>) -> Result<Response<EchoReply>, Status> {
        let _call = self.stats.start();
        let millis = req.into_inner().millis;
        tokio::time::sleep(Duration::from_millis(u64::from(millis))).await;
        Ok(Response::new(self.reply(Vec::new(), format!("slept {millis} ms"))))
    }
}

/// `count` items produced one after the other by `f(i)`.
fn async_stream<F, Fut>(count: u32, f: F) -> impl Stream<Item = EchoReply> + Send
where
    F: Fn(u32) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = EchoReply> + Send,
{
    tokio_stream::iter(0..count).then(f)
}

/// A server running in this process on its own runtime thread, so that a
/// test can stop it gracefully or kill it (every connection closed at once,
/// as when a pod dies).
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    name: String,
    stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a backend named `name` on 127.0.0.1 with a free port.
    pub fn spawn(name: &str) -> io::Result<TestServer> {
        TestServer::spawn_on("127.0.0.1:0".parse().expect("a valid address"), name)
    }

    /// Starts a backend named `name` on `addr` (port 0: a free port).
    pub fn spawn_on(addr: SocketAddr, name: &str) -> io::Result<TestServer> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let backend = Backend::new(name);
        let stats = backend.stats();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = thread::Builder::new().name(format!("greeter-{name}")).spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = TcpListener::from_std(std_listener) else {
                    return;
                };
                let serve = backend.serve(listener, async {
                    let _ = stop_rx.await;
                });
                tokio::select! {
                    _ = serve => {}
                    _ = kill_rx => {}
                }
            });
            // Dropping the runtime drops every connection task: their
            // sockets close without GOAWAY.
            rt.shutdown_background();
        })?;
        Ok(TestServer {
            addr,
            name: name.to_owned(),
            stats,
            stop: Some(stop_tx),
            kill: Some(kill_tx),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Calls started on this backend.
    pub fn calls(&self) -> u64 {
        self.stats.calls()
    }

    /// Calls in progress on this backend.
    pub fn in_flight(&self) -> u64 {
        self.stats.in_flight()
    }

    /// Its counters, readable after the server is moved away (stopped).
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Graceful stop: GOAWAY, open calls finish.
    pub fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.join();
    }

    /// Abrupt stop: every connection is closed at once, calls in flight fail.
    pub fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if let Some(tx) = self.kill.take() {
            let _ = tx.send(());
        }
        self.join();
    }

    fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill_now();
    }
}
