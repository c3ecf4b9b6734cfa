//! Client side: one channel (one HTTP/2 connection) and the per-backend
//! count of `SayHello` calls made over it.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use serde::Serialize;
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};

use crate::{
    pb::{
        echo::{echo_client::EchoClient, EchoReply, StreamRequest},
        helloworld::{greeter_client::GreeterClient, HelloRequest},
    },
    MAX_MESSAGE,
};

/// `host:port` or a URI; a bare address means cleartext HTTP/2.
pub fn uri(target: &str) -> String {
    if target.contains("://") {
        target.to_owned()
    } else {
        format!("http://{target}")
    }
}

/// Connects one channel: a single HTTP/2 connection, as a gRPC client of
/// one Service address uses.
pub async fn connect(target: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(uri(target))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

pub fn greeter(channel: Channel) -> GreeterClient<Channel> {
    GreeterClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

pub fn echo(channel: Channel) -> EchoClient<Channel> {
    EchoClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// Every reply of one `Echo/ServerStream` call, in order.
pub async fn server_stream_all(
    echo: &mut EchoClient<Channel>,
    req: StreamRequest,
) -> Result<Vec<EchoReply>, tonic::Status> {
    let mut stream = echo.server_stream(req).await?.into_inner();
    let mut replies = Vec::new();
    while let Some(r) = stream.message().await? {
        replies.push(r);
    }
    Ok(replies)
}

/// What one Echo call showed of its metadata on both sides.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Echoed {
    pub backend: String,
    /// The `x-*` metadata the backend received (repeated names joined
    /// with `,`).
    pub request: BTreeMap<String, String>,
    /// The `x-*` response headers the client received (the same joining).
    pub response: BTreeMap<String, String>,
}

/// One `Echo.Unary` call with `metadata`: what the backend saw and what
/// came back in the response headers.
pub async fn echo_metadata(
    channel: Channel,
    metadata: &[(String, String)],
    timeout: Duration,
) -> Result<Echoed, tonic::Status> {
    let mut req = tonic::Request::new(crate::pb::echo::EchoRequest {
        message: "echo".into(),
        ..Default::default()
    });
    req.set_timeout(timeout);
    for (k, v) in metadata {
        if let (Ok(k), Ok(v)) = (
            k.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
            v.parse(),
        ) {
            req.metadata_mut().append(k, v);
        }
    }
    let resp = echo(channel).unary(req).await?;
    let mut response: BTreeMap<String, String> = BTreeMap::new();
    for kv in resp.metadata().iter() {
        if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
            if let (true, Ok(v)) = (k.as_str().starts_with("x-"), v.to_str()) {
                response
                    .entry(k.as_str().to_owned())
                    .and_modify(|all| {
                        all.push(',');
                        all.push_str(v);
                    })
                    .or_insert_with(|| v.to_owned());
            }
        }
    }
    let reply = resp.into_inner();
    Ok(Echoed {
        backend: reply.backend,
        request: reply.metadata.into_iter().collect(),
        response,
    })
}

/// What `calls` SayHello calls over one channel did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Spread {
    pub calls: u64,
    pub ok: u64,
    pub errors: u64,
    /// Successful calls per serving backend.
    pub backends: BTreeMap<String, u64>,
    /// Failed calls per status code name.
    pub error_codes: BTreeMap<String, u64>,
    /// The first error's message, if any.
    pub first_error: Option<String>,
}

impl Spread {
    /// A table: backend, calls, share.
    pub fn table(&self) -> String {
        let width = self.backends.keys().map(String::len).max().unwrap_or(7).max(7);
        let mut s = format!("{:<width$}  {:>7}  {:>6}\n", "backend", "calls", "share");
        for (name, n) in &self.backends {
            let share = if self.calls == 0 {
                0.0
            } else {
                *n as f64 * 100.0 / self.calls as f64
            };
            s.push_str(&format!("{name:<width$}  {n:>7}  {share:>5.1}%\n"));
        }
        if self.errors > 0 {
            s.push_str(&format!("{:<width$}  {:>7}\n", "(failed)", self.errors));
            for (code, n) in &self.error_codes {
                s.push_str(&format!("  {code}: {n}\n"));
            }
            if let Some(e) = &self.first_error {
                s.push_str(&format!("  first error: {e}\n"));
            }
        }
        s
    }
}

/// Makes `calls` SayHello calls over `channel`, at most `concurrency` at a
/// time, and counts them per backend. Each call has `timeout`.
pub async fn say_hello_spread(channel: Channel, calls: u64, concurrency: usize, timeout: Duration) -> Spread {
    say_hello_spread_with(channel, calls, concurrency, timeout, &[]).await
}

/// [`say_hello_spread`] with `metadata` (lower-case name, value) on every
/// call.
pub async fn say_hello_spread_with(
    channel: Channel,
    calls: u64,
    concurrency: usize,
    timeout: Duration,
    metadata: &[(String, String)],
) -> Spread {
    let metadata: Vec<(
        tonic::metadata::MetadataKey<tonic::metadata::Ascii>,
        tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    )> = metadata
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.parse().ok()?)))
        .collect();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..calls {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let mut client = greeter(channel.clone());
        let md = metadata.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let mut req = tonic::Request::new(HelloRequest {
                name: format!("call-{i}"),
            });
            req.set_timeout(timeout);
            for (k, v) in md {
                req.metadata_mut().insert(k, v);
            }
            client.say_hello(req).await.map(|r| r.into_inner().backend)
        });
    }
    let mut spread = Spread {
        calls,
        ..Spread::default()
    };
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(backend)) => {
                spread.ok += 1;
                *spread.backends.entry(backend).or_default() += 1;
            }
            Ok(Err(status)) => {
                spread.errors += 1;
                *spread.error_codes.entry(format!("{:?}", status.code())).or_default() += 1;
                spread
                    .first_error
                    .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
            }
            Err(join) => {
                spread.errors += 1;
                spread.first_error.get_or_insert_with(|| join.to_string());
            }
        }
    }
    spread
}

/// Makes `calls` SayHello calls over `channel` one after another, `interval`
/// apart (a client that keeps its connection for a long time, as a service
/// calling another does), and counts them per backend. A call that fails
/// does not stop the others: the channel reconnects for the next one.
pub async fn say_hello_paced(channel: Channel, calls: u64, interval: Duration, timeout: Duration) -> Spread {
    let mut client = greeter(channel);
    let mut spread = Spread {
        calls,
        ..Spread::default()
    };
    for i in 0..calls {
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        let mut req = tonic::Request::new(HelloRequest {
            name: format!("call-{i}"),
        });
        req.set_timeout(timeout);
        match client.say_hello(req).await {
            Ok(r) => {
                spread.ok += 1;
                *spread.backends.entry(r.into_inner().backend).or_default() += 1;
            }
            Err(status) => {
                spread.errors += 1;
                *spread.error_codes.entry(format!("{:?}", status.code())).or_default() += 1;
                spread
                    .first_error
                    .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
            }
        }
    }
    spread
}
