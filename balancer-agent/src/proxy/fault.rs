//! Fault injection: which faults a call gets, drawn from its service's
//! [`Fault`] (each with its own share of the calls, drawn independently,
//! as Istio does).

use std::time::Duration;

use crate::{
    balance::rand::rand_u64,
    model::{Fault, Share},
};

/// The faults drawn for one call.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Injection {
    /// Hold the call this long before it is forwarded.
    pub delay: Option<Duration>,
    /// Answer the call with this gRPC status and message (after the delay,
    /// if any) instead of forwarding it.
    pub abort: Option<(u16, Box<str>)>,
}

impl Injection {
    /// What the access log says was injected.
    pub fn label(&self) -> Option<&'static str> {
        match (self.delay.is_some(), self.abort.is_some()) {
            (false, false) => None,
            (true, false) => Some("delay"),
            (false, true) => Some("abort"),
            (true, true) => Some("delay+abort"),
        }
    }
}

/// Whether a call falls into `share` (one uniform draw).
pub(crate) fn drawn(share: Share) -> bool {
    share == Share::ALL || share.contains((rand_u64() % u64::from(Share::MILLION)) as u32)
}

/// Draws the faults of one call.
pub(crate) fn draw(fault: &Fault) -> Injection {
    Injection {
        delay: fault.delay.as_ref().filter(|d| drawn(d.share)).map(|d| d.duration),
        abort: fault
            .abort
            .as_ref()
            .filter(|a| drawn(a.share))
            .map(|a| (a.code, a.message.as_str().into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FaultAbort, FaultDelay};

    fn share(p: f64) -> Share {
        Share::from_percent(p).expect("a share")
    }

    #[test]
    fn shares_are_drawn_independently_and_about_right() {
        let f = Fault {
            delay: Some(FaultDelay {
                share: share(30.0),
                duration: Duration::from_millis(5),
            }),
            abort: Some(FaultAbort {
                share: share(50.0),
                code: 14,
                message: "x".into(),
            }),
        };
        let n = 20_000;
        let draws: Vec<Injection> = (0..n).map(|_| draw(&f)).collect();
        let delays = draws.iter().filter(|i| i.delay.is_some()).count();
        let aborts = draws.iter().filter(|i| i.abort.is_some()).count();
        let both = draws.iter().filter(|i| i.label() == Some("delay+abort")).count();
        assert!((5_400..=6_600).contains(&delays), "{delays} delays of {n}");
        assert!((9_400..=10_600).contains(&aborts), "{aborts} aborts of {n}");
        assert!((2_500..=3_500).contains(&both), "{both} both of {n}");
        assert!(draws
            .iter()
            .filter_map(|i| i.delay)
            .all(|d| d == Duration::from_millis(5)));
        assert!(draws
            .iter()
            .filter_map(|i| i.abort.as_ref())
            .all(|a| *a == (14, "x".into())));
    }

    #[test]
    fn all_and_nothing() {
        let f = Fault {
            delay: Some(FaultDelay {
                share: share(0.0),
                duration: Duration::from_secs(1),
            }),
            abort: Some(FaultAbort {
                share: Share::ALL,
                code: 8,
                message: "busy".into(),
            }),
        };
        for _ in 0..1000 {
            let i = draw(&f);
            assert_eq!(i.delay, None);
            assert_eq!(i.abort, Some((8, "busy".into())));
            assert_eq!(i.label(), Some("abort"));
        }
        assert_eq!(draw(&Fault::default()), Injection::default());
        assert_eq!(Injection::default().label(), None);
    }
}
