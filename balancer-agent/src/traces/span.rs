//! The agent's span of one call, and its OTLP form.
//!
//! Named `<package.Service>/<Method>` with OpenTelemetry's RPC conventions
//! (`rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`,
//! `server.address`, `server.port`) and the balancer's own attributes
//! (`balancer.service`, `balancer.endpoint`, `balancer.retries`,
//! `balancer.fault`). Kind CLIENT: the agent calls the endpoint on the
//! client's behalf.

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use opentelemetry_proto::tonic::{
    common::v1::{any_value::Value, AnyValue, KeyValue},
    trace::v1::{span::SpanKind, status::StatusCode, Span, Status},
};

use super::{context, SpanId, TraceId};

/// A call's span while the call runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSpan {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The client's span, when it sent a valid `traceparent`.
    pub parent: Option<SpanId>,
    /// Whether the span is exported (and the flag forwarded).
    pub sampled: bool,
    pub start: SystemTime,
}

impl CallSpan {
    pub fn start(trace_id: TraceId, parent: Option<SpanId>, sampled: bool) -> CallSpan {
        CallSpan {
            trace_id,
            span_id: SpanId::random(),
            parent,
            sampled,
            start: SystemTime::now(),
        }
    }

    /// The `traceparent` the endpoint gets: this span as its parent.
    pub fn traceparent(&self) -> [u8; context::TRACEPARENT_LEN] {
        context::format(self.trace_id, self.span_id, self.sampled)
    }
}

/// What the call did, for its span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedSpan {
    pub span: CallSpan,
    pub duration: Duration,
    pub service: String,
    /// `/package.Service/Method`.
    pub path: String,
    /// The last endpoint tried, if any.
    pub endpoint: Option<SocketAddr>,
    pub retries: u32,
    /// `None` when the stream was reset before a status.
    pub grpc_status: Option<u16>,
    /// The fault injected into the call, if any.
    pub fault: Option<&'static str>,
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl FinishedSpan {
    /// `package.Service` and `Method` of the path (the whole path and an
    /// empty method when it has no such shape).
    fn rpc(&self) -> (&str, &str) {
        let p = self.path.strip_prefix('/').unwrap_or(&self.path);
        p.split_once('/').unwrap_or((p, ""))
    }

    pub fn to_otlp(&self) -> Span {
        let (service, method) = self.rpc();
        let mut attributes = vec![
            kv("rpc.system", Value::StringValue("grpc".into())),
            kv("rpc.service", Value::StringValue(service.to_owned())),
            kv("rpc.method", Value::StringValue(method.to_owned())),
            kv("balancer.service", Value::StringValue(self.service.clone())),
            kv("balancer.retries", Value::IntValue(i64::from(self.retries))),
        ];
        if let Some(code) = self.grpc_status {
            attributes.push(kv("rpc.grpc.status_code", Value::IntValue(i64::from(code))));
        }
        if let Some(ep) = self.endpoint {
            attributes.push(kv("server.address", Value::StringValue(ep.ip().to_string())));
            attributes.push(kv("server.port", Value::IntValue(i64::from(ep.port()))));
            attributes.push(kv("balancer.endpoint", Value::StringValue(ep.to_string())));
        }
        if let Some(f) = self.fault {
            attributes.push(kv("balancer.fault", Value::StringValue(f.to_owned())));
        }
        let status = match self.grpc_status {
            Some(0) => Status::default(),
            Some(code) => Status {
                code: StatusCode::Error as i32,
                message: format!("gRPC status {code}"),
            },
            None => Status {
                code: StatusCode::Error as i32,
                message: "stream reset before a status".to_owned(),
            },
        };
        let name = if method.is_empty() {
            self.path.clone()
        } else {
            format!("{service}/{method}")
        };
        Span {
            trace_id: self.span.trace_id.0.to_vec(),
            span_id: self.span.span_id.0.to_vec(),
            parent_span_id: self.span.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
            // The sampled flag, as the spec's `flags` field carries it.
            flags: 1,
            name,
            kind: SpanKind::Client as i32,
            start_time_unix_nano: nanos(self.span.start),
            end_time_unix_nano: nanos(self.span.start + self.duration),
            attributes,
            status: Some(status),
            ..Span::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn a_span_follows_the_rpc_conventions() {
        let parent = SpanId([7; 8]);
        let done = FinishedSpan {
            span: CallSpan::start(TraceId([1; 16]), Some(parent), true),
            duration: Duration::from_millis(3),
            service: "greeter".into(),
            path: "/helloworld.Greeter/SayHello".into(),
            endpoint: Some("10.0.0.5:50051".parse().expect("addr")),
            retries: 1,
            grpc_status: Some(14),
            fault: None,
        };
        let s = done.to_otlp();
        assert_eq!(s.name, "helloworld.Greeter/SayHello");
        assert_eq!(s.trace_id, vec![1; 16]);
        assert_eq!(s.parent_span_id, vec![7; 8]);
        assert_eq!(s.span_id, done.span.span_id.0.to_vec());
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 3_000_000);
        assert_eq!(attr(&s, "rpc.system"), Some(&Value::StringValue("grpc".into())));
        assert_eq!(
            attr(&s, "rpc.service"),
            Some(&Value::StringValue("helloworld.Greeter".into()))
        );
        assert_eq!(attr(&s, "rpc.method"), Some(&Value::StringValue("SayHello".into())));
        assert_eq!(attr(&s, "rpc.grpc.status_code"), Some(&Value::IntValue(14)));
        assert_eq!(attr(&s, "server.port"), Some(&Value::IntValue(50051)));
        assert_eq!(attr(&s, "balancer.retries"), Some(&Value::IntValue(1)));
        assert_eq!(s.status.as_ref().map(|st| st.code), Some(StatusCode::Error as i32));

        let ok = FinishedSpan {
            grpc_status: Some(0),
            ..done
        };
        assert_eq!(ok.to_otlp().status.map(|st| st.code), Some(StatusCode::Unset as i32));
    }
}
