//! The messages between a client connection and the upstream connections
//! its calls use. A call is named by its client connection, its client
//! stream and its attempt, so that what an abandoned attempt still sends is
//! recognised and dropped.

use std::sync::Arc;

use balancer_relay::frame::Reason;
use bytes::Bytes;

use super::{head::Head, mailbox::Mailbox};

/// One attempt of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CallKey {
    pub conn: u64,
    pub stream: u32,
    pub attempt: u32,
}

/// To an upstream connection.
pub(crate) enum ToUp {
    /// A new stream: the request head and what the client already sent.
    Open {
        key: CallKey,
        reply: Arc<Mailbox<ToClient>>,
        head: Head,
        data: Bytes,
        end: bool,
    },
    Data {
        key: CallKey,
        data: Bytes,
        end: bool,
    },
    Trailers {
        key: CallKey,
        head: Head,
    },
    /// The client reset its stream or the call was given up.
    Reset {
        key: CallKey,
        reason: Reason,
    },
    /// The client took `n` response bytes: the upstream may send more.
    Credit {
        key: CallKey,
        n: u32,
    },
}

/// Why an upstream connection gave a call back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GaveBack {
    /// The endpoint never handled the call (REFUSED_STREAM, GOAWAY below
    /// its stream, no connection): it may go elsewhere.
    Refused(&'static str),
    /// No HTTP/2 connection to the endpoint could be made (connect or
    /// handshake failed): the call may go elsewhere.
    Unreachable(Arc<str>),
    /// The connection was lost after the endpoint took the call.
    Lost(&'static str),
}

/// To a client connection, about the call on `stream`.
pub(crate) struct ToClient {
    pub stream: u32,
    pub attempt: u32,
    pub what: Upstream,
}

pub(crate) enum Upstream {
    /// Response headers, or trailers when the response already started.
    Head {
        head: Head,
        end: bool,
    },
    Data {
        data: Bytes,
        end: bool,
    },
    Reset(Reason),
    GaveBack(GaveBack),
    /// The endpoint took `n` request bytes: the client may send more.
    Credit(u32),
}
