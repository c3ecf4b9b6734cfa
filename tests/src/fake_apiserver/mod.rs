//! The fake Kubernetes API server that `balancer-fake-apiserver` runs:
//! HTTP/1.1 like kube-apiserver for the resources balancer's agent uses,
//! controlled by the test over stdin/stdout ([`control`]). Drive it with
//! [`crate::apiserver::FakeApiServer`], which documents both protocols.

pub mod body;
pub mod control;
pub mod http;
pub mod patch;
pub mod resources;
pub mod selector;
pub mod status;
pub mod store;
pub mod writes;

use std::{
    collections::HashSet,
    io::{self, Write as _},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use self::{resources::Rid, store::Store};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    /// BOOKMARK events to watches that allow them, this often (None: only
    /// on the `bookmark` command).
    pub bookmark_interval: Option<Duration>,
    /// Changes kept per resource for resumed watches (None: all, until
    /// `compact`).
    pub history: Option<usize>,
    /// The user named in 403 messages.
    pub user: String,
}

/// What the test switches and reads besides the objects.
pub struct State {
    pub store: Store,
    /// (verb or `*`, resource plural or `plural/status`).
    pub forbidden: HashSet<(String, String)>,
    pub not_served: HashSet<Rid>,
    /// The server is down: connections are closed as they arrive and at
    /// their next request.
    pub unavailable: bool,
    /// `METHOD path?query` of every request.
    pub requests: Vec<String>,
}

impl State {
    pub fn is_forbidden(&self, verb: &str, plural: &str, sub: Option<&str>) -> bool {
        let resource = match sub {
            Some(s) => format!("{plural}/{s}"),
            None => plural.to_owned(),
        };
        self.forbidden.contains(&(verb.to_owned(), resource.clone()))
            || self.forbidden.contains(&("*".to_owned(), resource))
    }
}

/// The state both the HTTP server and the control channel use.
pub struct Shared {
    state: Mutex<State>,
    pub user: String,
}

impl Shared {
    pub fn new(opts: &Options) -> Shared {
        Shared {
            state: Mutex::new(State {
                store: Store::new(opts.history),
                forbidden: HashSet::new(),
                not_served: HashSet::new(),
                unavailable: false,
                requests: Vec::new(),
            }),
            user: opts.user.clone(),
        }
    }

    /// The state, locked. Nothing panics while holding it, but a poisoned
    /// lock is taken over rather than propagated.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Binds, prints `LISTENING <addr>` on stdout, and serves until stdin
/// closes (the control channel; see [`control`]).
pub async fn run(opts: Options) -> io::Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.listen).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared::new(&opts));
    {
        let mut out = io::stdout().lock();
        writeln!(out, "LISTENING {addr}")?;
        out.flush()?;
    }
    tracing::info!(%addr, "fake API server listening");
    let control_shared = shared.clone();
    std::thread::Builder::new().name("control".into()).spawn(move || {
        control::serve_stdio(&control_shared);
        // The test is gone (or closed our stdin): so are we.
        std::process::exit(0);
    })?;
    if let Some(every) = opts.bookmark_interval {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                shared.lock().store.bookmark();
            }
        });
    }
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shared.lock().unavailable {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| http::handle(shared.clone(), req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}
