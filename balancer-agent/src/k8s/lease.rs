//! Leader election with a `coordination.k8s.io/v1` Lease in the agent's own
//! namespace, so that one agent of the DaemonSet (the holder) writes
//! GRPCRoute status while the others stand by.
//!
//! Each round (every [`LeaseOptions::renew_every`]) reads the Lease and:
//! - creates it, held by this agent, when it does not exist;
//! - renews it (`renewTime` = now) when this agent holds it;
//! - takes it over when nobody holds it (`holderIdentity` empty: released)
//!   or its holder stopped renewing (`renewTime + leaseDurationSeconds` is
//!   in the past);
//! - otherwise follows its holder.
//!
//! Every write carries the `resourceVersion` just read, so of two agents
//! that race for the Lease one gets 409 Conflict: it does not lead and reads
//! again at its next round. A holder that cannot renew (API errors) keeps
//! leading for `duration - renew_every` after its last renewal, then stops
//! before anyone can take over. On shutdown the holder clears
//! `holderIdentity`, and the next agent takes over at its next round rather
//! than after the Lease expires.
//!
//! Expiry compares the holder's `renewTime` with this agent's clock: the
//! nodes' clocks must agree to well within `leaseDurationSeconds` (NTP).

use std::{fmt, future::Future, sync::Arc, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{api::PostParams, Api};
use tokio::{sync::watch, time::Instant};

use crate::error::Chain;

/// The Lease's default name.
pub const DEFAULT_LEASE_NAME: &str = "balancer-agent-status";

/// Where "now" comes from: the system clock, or (in tests) a wall clock that
/// moves with tokio's (pausable) time.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> Timestamp + Send + Sync>);

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock(Arc::new(Timestamp::now))
    }

    /// The wall time at creation plus tokio's elapsed time since: with
    /// tokio's time paused, it moves only when tokio's time does.
    pub fn following_tokio() -> Clock {
        let wall = Timestamp::now();
        let start = Instant::now();
        Clock(Arc::new(move || {
            wall.checked_add(Instant::now() - start).unwrap_or(wall)
        }))
    }

    pub fn now(&self) -> Timestamp {
        (self.0)()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

/// Which Lease, who we are, and the timing.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    /// The agent's namespace (`POD_NAMESPACE` from the downward API).
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// `holderIdentity` when this agent holds the Lease: its pod name.
    pub identity: String,
    /// `leaseDurationSeconds`: how long after the holder's last renewal
    /// others may take over (whole seconds, at least 1).
    pub duration: Duration,
    /// How often each agent reads the Lease (and the holder renews it).
    pub renew_every: Duration,
    pub clock: Clock,
}

impl LeaseOptions {
    /// Lease [`DEFAULT_LEASE_NAME`], 15 s long, renewed every 5 s.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> LeaseOptions {
        LeaseOptions {
            namespace: namespace.into(),
            name: DEFAULT_LEASE_NAME.to_owned(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            clock: Clock::system(),
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// How long a holder that cannot renew goes on leading.
    fn grace(&self) -> Duration {
        self.duration.saturating_sub(self.renew_every)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "forbidden: the agent's service account may not {verb} Lease {namespace}/{name}; \
         grant it in the agent's Role (deploy/rbac.yaml)"
    )]
    Forbidden {
        verb: &'static str,
        namespace: String,
        name: String,
    },
    #[error("cannot {verb} Lease {namespace}/{name}")]
    Api {
        verb: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What a round found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// This agent holds the Lease (created, renewed or taken over).
    Leading,
    /// Another agent holds it and renews it.
    HeldBy(String),
    /// Another agent wrote the Lease between our read and our write (409).
    Lost,
}

/// Contends for one Lease.
pub struct Elector {
    api: Api<Lease>,
    opts: LeaseOptions,
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

impl Elector {
    pub fn new(client: kube::Client, opts: LeaseOptions) -> Elector {
        Elector {
            api: Api::namespaced(client, &opts.namespace),
            opts,
        }
    }

    pub fn options(&self) -> &LeaseOptions {
        &self.opts
    }

    fn error(&self, verb: &'static str, source: kube::Error) -> LeaseError {
        let (namespace, name) = (self.opts.namespace.clone(), self.opts.name.clone());
        if api_code(&source) == Some(403) {
            LeaseError::Forbidden { verb, namespace, name }
        } else {
            LeaseError::Api {
                verb,
                namespace,
                name,
                source,
            }
        }
    }

    fn expired(&self, spec: &LeaseSpec, now: Timestamp) -> bool {
        let Some(MicroTime(renewed)) = spec.renew_time else {
            return true;
        };
        let seconds = spec
            .lease_duration_seconds
            .unwrap_or_else(|| self.opts.duration_seconds());
        now.duration_since(renewed) >= SignedDuration::from_secs(i64::from(seconds))
    }

    /// One round: create, renew or take over the Lease if this agent may.
    pub async fn round(&mut self) -> Result<Round, LeaseError> {
        let now = MicroTime(self.opts.clock.now());
        let current = self
            .api
            .get_opt(&self.opts.name)
            .await
            .map_err(|e| self.error("get", e))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.opts.name.clone()),
                    namespace: Some(self.opts.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.opts.identity.clone()),
                    lease_duration_seconds: Some(self.opts.duration_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Round::Leading),
                Err(e) if api_code(&e) == Some(409) => Ok(Round::Lost),
                Err(e) => Err(self.error("create", e)),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        match spec.holder_identity.as_deref().filter(|h| !h.is_empty()) {
            Some(me) if me == self.opts.identity => {}
            Some(other) if !self.expired(spec, now.0) => return Ok(Round::HeldBy(other.to_owned())),
            _ => {
                spec.holder_identity = Some(self.opts.identity.clone());
                spec.acquire_time = Some(now.clone());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            }
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(self.opts.duration_seconds());
        // `lease` carries the resourceVersion read: a concurrent write wins.
        match self.api.replace(&self.opts.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Round::Leading),
            Err(e) if api_code(&e) == Some(409) => Ok(Round::Lost),
            Err(e) => Err(self.error("update", e)),
        }
    }

    /// Gives the Lease up if this agent holds it (clears `holderIdentity`).
    /// Returns whether it did.
    pub async fn release(&mut self) -> Result<bool, LeaseError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.opts.name)
            .await
            .map_err(|e| self.error("get", e))?
        else {
            return Ok(false);
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.opts.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        match self.api.replace(&self.opts.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(e) if api_code(&e) == Some(409) => Ok(false),
            Err(e) => Err(self.error("update", e)),
        }
    }

    /// Runs rounds every `renew_every` and publishes on `leading` whether
    /// this agent leads, until `stop` completes; then stops leading and
    /// releases the Lease if it held it. Errors (a missing permission, an
    /// API outage) never end it: they are logged (a missing permission once)
    /// and the rounds go on.
    pub async fn run(mut self, leading: watch::Sender<bool>, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let mut last_renewal: Option<Instant> = None;
        let mut failing = false;
        loop {
            let outcome = tokio::select! {
                outcome = self.round() => outcome,
                () = &mut stop => break,
            };
            let now = Instant::now();
            let lead = match &outcome {
                Ok(Round::Leading) => {
                    last_renewal = Some(now);
                    true
                }
                Ok(Round::HeldBy(_) | Round::Lost) => {
                    last_renewal = None;
                    false
                }
                Err(_) => last_renewal.is_some_and(|t| now < t + self.opts.grace()),
            };
            match &outcome {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!(lease = %self.opts.name, "Lease reachable again");
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(
                        error = %Chain(e),
                        "cannot take part in the route-status election; balancing goes on, GRPCRoute \
                         status is not written by this agent"
                    );
                }
                Err(e) => tracing::debug!(error = %Chain(e), "Lease still unavailable"),
            }
            let was = leading.send_replace(lead);
            match (was, lead) {
                (false, true) => {
                    tracing::info!(lease = %self.opts.name, identity = %self.opts.identity, "leading: this agent writes GRPCRoute status")
                }
                (true, false) => {
                    let holder = match &outcome {
                        Ok(Round::HeldBy(h)) => h.as_str(),
                        _ => "",
                    };
                    tracing::info!(lease = %self.opts.name, %holder, "no longer leading");
                }
                _ => {}
            }
            tokio::select! {
                () = tokio::time::sleep(self.opts.renew_every) => {}
                () = &mut stop => break,
            }
        }
        leading.send_replace(false);
        if last_renewal.is_some() {
            match self.release().await {
                Ok(true) => tracing::info!(lease = %self.opts.name, "Lease released"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %Chain(&e), "could not release the Lease; it expires on its own"),
            }
        }
    }
}
