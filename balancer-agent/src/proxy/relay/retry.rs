//! What a call does when an upstream connection gives it back: the retry
//! decision as a pure function, so that every case is a row of a table.

use super::msg::GaveBack;
use crate::balance::Outcome;

/// Where the call stands when it is given back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Standing {
    /// Response headers already went to the client.
    pub responded: bool,
    /// The request bytes sent so far are all still kept (replay buffer).
    pub replayable: bool,
    /// Attempts made, and the most allowed.
    pub attempts: usize,
    pub max_attempts: usize,
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Try again; `same_endpoint`: the endpoint that gave the call back may
    /// take it on another connection.
    Retry { same_endpoint: bool },
    /// No endpoint could take it: UNAVAILABLE naming the last error.
    NoEndpoint,
    /// The endpoint took the call and its connection broke: UNAVAILABLE.
    Failed,
}

/// How the endpoint's attempt counts for the balancer, and what comes next.
pub(crate) fn after(back: &GaveBack, s: Standing) -> (Outcome, Next) {
    let may_retry = !s.responded && s.replayable && s.attempts < s.max_attempts;
    match back {
        // Refused on one connection (REFUSED_STREAM, GOAWAY above the call):
        // the same endpoint may take it on another.
        GaveBack::Refused(_) if may_retry => (Outcome::Refused, Next::Retry { same_endpoint: true }),
        GaveBack::Refused(_) => (Outcome::Refused, Next::NoEndpoint),
        // No connection could be made: another endpoint.
        GaveBack::Unreachable(_) if may_retry => (Outcome::ConnectFailed, Next::Retry { same_endpoint: false }),
        GaveBack::Unreachable(_) => (Outcome::ConnectFailed, Next::NoEndpoint),
        GaveBack::Lost(_) => (Outcome::Status(super::super::grpc::UNAVAILABLE), Next::Failed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: Standing = Standing {
        responded: false,
        replayable: true,
        attempts: 1,
        max_attempts: 3,
    };

    #[test]
    fn every_case_of_a_call_given_back() {
        let refused = GaveBack::Refused("endpoint refused the stream");
        let unreachable = GaveBack::Unreachable("connect to 10.0.0.1:80: refused".into());
        let lost = GaveBack::Lost("upstream connection lost");
        let last = Standing { attempts: 3, ..FRESH };
        let responded = Standing {
            responded: true,
            ..FRESH
        };
        let too_long = Standing {
            replayable: false,
            ..FRESH
        };
        let unavailable = Outcome::Status(14);
        let table: &[(&GaveBack, Standing, Outcome, Next)] = &[
            (&refused, FRESH, Outcome::Refused, Next::Retry { same_endpoint: true }),
            (&refused, last, Outcome::Refused, Next::NoEndpoint),
            (&refused, responded, Outcome::Refused, Next::NoEndpoint),
            (&refused, too_long, Outcome::Refused, Next::NoEndpoint),
            (
                &unreachable,
                FRESH,
                Outcome::ConnectFailed,
                Next::Retry { same_endpoint: false },
            ),
            (&unreachable, last, Outcome::ConnectFailed, Next::NoEndpoint),
            (&unreachable, too_long, Outcome::ConnectFailed, Next::NoEndpoint),
            (&lost, FRESH, unavailable, Next::Failed),
            (&lost, responded, unavailable, Next::Failed),
        ];
        for (back, standing, outcome, next) in table {
            assert_eq!(after(back, *standing), (*outcome, *next), "{back:?} {standing:?}");
        }
    }
}
