//! The relay's side of traces: a new call's span from its request head
//! (the head the endpoint gets names the span as its parent), and the
//! span's end. Only reached when tracing is on: with it off, a call pays
//! one `None` check.

use crate::traces::{context, CallSpan, TraceId, TraceParent, Tracer};

use super::head::Head;

/// The call's span, and its head with the `traceparent` to forward
/// (`tracestate` is left as the client sent it).
pub(crate) fn begin(tracer: &Tracer, head: &Head) -> (Head, Box<CallSpan>) {
    let span = tracer.begin(incoming(head));
    let head = head.with(b"traceparent", &span.traceparent());
    (head, Box::new(span))
}

/// The client's `traceparent`, if it sent exactly one valid value (two
/// are as good as none, as the spec says).
fn incoming(head: &Head) -> Option<TraceParent> {
    let mut values = head.iter().filter(|f| f.name == b"traceparent");
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    context::parse(first.value)
}

/// The trace id the access log shows: that of a sampled call.
pub(crate) fn logged_id(span: Option<&CallSpan>) -> Option<TraceId> {
    span.filter(|s| s.sampled).map(|s| s.trace_id)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{proxy::relay::head::Builder, traces::TracingConfig};

    fn head(fields: &[(&str, &str)]) -> Head {
        let mut b = Builder::with_capacity(128);
        for (n, v) in fields {
            b.push(n.as_bytes(), v.as_bytes(), false);
        }
        b.finish()
    }

    fn tracer() -> Arc<Tracer> {
        let config = TracingConfig::new("http://127.0.0.1:4318", Some(1.0), None).expect("config");
        Tracer::new(config, Arc::default()).0
    }

    const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    #[test]
    fn the_forwarded_head_names_the_agents_span_and_keeps_tracestate() {
        let h = head(&[
            (":path", "/a.B/C"),
            ("traceparent", CLIENT),
            ("tracestate", "vendor=opaque"),
        ]);
        let (out, span) = begin(&tracer(), &h);
        let sent = context::parse(out.get(b"traceparent").expect("traceparent")).expect("valid");
        assert_eq!(sent.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sent.parent_id, span.span_id);
        assert!(!sent.sampled, "the client's unsampled decision is kept");
        assert_eq!(span.parent.map(|p| p.to_string()).as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(out.get(b"tracestate"), Some(&b"vendor=opaque"[..]));
        assert_eq!(out.iter().count(), 3);
        assert_eq!(logged_id(Some(&span)), None, "not sampled: no trace id logged");
    }

    #[test]
    fn an_invalid_or_repeated_traceparent_starts_a_new_trace() {
        for fields in [
            &[("traceparent", "00-zzz")][..],
            &[("traceparent", CLIENT), ("traceparent", CLIENT)][..],
            &[][..],
        ] {
            let (out, span) = begin(&tracer(), &head(fields));
            assert_eq!(span.parent, None, "{fields:?}");
            assert_ne!(span.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
            let values: Vec<_> = out.iter().filter(|f| f.name == b"traceparent").collect();
            assert_eq!(values.len(), 1, "{fields:?}");
            let sent = context::parse(values[0].value).expect("valid");
            assert_eq!((sent.trace_id, sent.parent_id), (span.trace_id, span.span_id));
            assert!(sent.sampled, "sampling 1");
            assert_eq!(logged_id(Some(&span)), Some(span.trace_id));
        }
    }
}
