//! Pinned connections: an enrolled pod's TCP connections that go straight
//! to a balanced Service VIP instead of through the agent, found per pod and
//! — when asked — closed so the client re-dials through the agent.
//!
//! # Why they exist
//!
//! `cgroup/connect4` redirects a pod's `connect()` only once the pod's cgroup
//! is in the enrolled map. A connection opened before that (the pod started
//! before the agent, or re-dialled while the agent was down and the programs
//! detached) stays on the VIP, kube-proxy picks one backend for it, and a
//! gRPC client keeps that one connection for hours. In the pod's network
//! namespace such a socket's remote address is the VIP; a redirected one
//! shows the agent's listener instead.
//!
//! # How
//!
//! Per pod, per [`Sweeper::sweep`]:
//!
//! 1. [`netns`]: the pod's cgroup directory → a process in its subtree →
//!    `<procfs>/<pid>/ns/net`, opened once and cached while the pod is
//!    passed in.
//! 2. [`diag`]: a `NETLINK_SOCK_DIAG` socket created inside that namespace
//!    by a short-lived thread ([`netns::run_in`]; no other thread ever
//!    changes namespace) dumps the ESTABLISHED TCP sockets, IPv4 and IPv6.
//!    A socket is *pinned* when its remote address:port is a balanced VIP
//!    (IPv4-mapped IPv6 remotes, as dual-stack clients use, count as the
//!    IPv4 address) **and** the socket's cgroup id lies in the pod's cgroup
//!    subtree — so sockets that other processes hold in the same namespace
//!    (a `hostNetwork` pod shares the node's) are never counted.
//! 3. With the pod's remedy on, each pinned socket is aborted with
//!    `SOCK_DESTROY` (the client sees `ECONNABORTED`, the server a reset)
//!    at most [`SweepConfig::destroy_rate`] per second on the whole node
//!    ([`rate`]); a sweep waits for tokens at most
//!    [`SweepConfig::max_wait`] and leaves the rest, reported as
//!    [`Action::Deferred`], to the next sweep.
//!
//! Only pass pods whose cgroup is already in the enrolled map with the
//! remedy on: a closed connection re-dials, and only an enrolled pod's
//! re-dial reaches the agent. Every error is the pod's own
//! ([`PodReport::error`]); a sweep never fails as a whole.
//!
//! # What the deployment needs
//!
//! The agent is `hostNetwork` but has its own PID namespace, so another
//! pod's `cgroup.procs` lists its processes as `0` there. Two ways to see
//! them:
//!
//! * `hostPID: true`, with `procfs` left at `/proc`: every host process
//!   appears in the agent's own `/proc`, and the agent (root) can signal
//!   every root process on the node.
//! * **Chosen:** the host's `/proc` as a read-only `hostPath` volume at
//!   `/hostproc`, `procfs = /hostproc`. The agent can read host processes'
//!   files but holds no pid of them: no signals, no `ptrace` attach. Pids are
//!   found by one scan of `/hostproc/*/cgroup` per sweep, only for pods not
//!   already cached (see [`netns`] for how the cgroup paths, shown relative
//!   to the agent's own cgroup namespace, are matched).
//!
//! The second grants less for the same result; Cilium's agent mounts the
//! host's `/proc` the same way. Either way the agent needs, beyond what the
//! kernel programs need:
//!
//! * `CAP_SYS_PTRACE`: opening another process's `ns/net` is a
//!   ptrace-read access check, and pod processes hold capabilities the
//!   agent dropped (measured: `EACCES` without it).
//! * `CAP_SYS_ADMIN` (already granted): `setns(CLONE_NEWNET)`.
//! * `CAP_NET_ADMIN` (already granted): `SOCK_DESTROY`; the kernel needs
//!   `CONFIG_INET_DIAG_DESTROY=y` (otherwise `EOPNOTSUPP`, reported per pod).
//!
//! ```yaml
//! # deploy/daemonset.yaml, container `agent`
//! env:
//!   - { name: BALANCER_PROCFS, value: /hostproc }
//! securityContext:
//!   capabilities:
//!     add: ["BPF", "NET_ADMIN", "SYS_ADMIN", "PERFMON", "SYS_PTRACE"]
//! volumeMounts:
//!   - { name: hostproc, mountPath: /hostproc, readOnly: true }
//! # pod spec
//! volumes:
//!   - { name: hostproc, hostPath: { path: /proc, type: Directory } }
//! ```
//!
//! # Wiring
//!
//! In Kubernetes mode with the kernel programs (`crate::app::pinned`):
//!
//! * Opt-in: annotation `balancer.io/reconnect-pinned: enabled` on the pod,
//!   or the label (else annotation) of the same name on its namespace; the
//!   pod's value wins and `disabled` opts out. It reaches the sweep as
//!   [`crate::model::Enrolled::reconnect_pinned`]. Without it a pod is
//!   still swept and counted, never closed.
//! * A task every 30 s (`--pinned-interval-seconds`,
//!   `BALANCER_PINNED_INTERVAL_SECONDS`; 0: off) sweeps the current model's
//!   enrolled cgroups for its VIPs on a blocking thread, the `Sweeper` moved
//!   in and back. A pod's remedy holds only if its cgroup is in the kernel's
//!   enrolled map at that moment (so its re-dial is redirected).
//! * Results: [`tally`] per enrolled cgroup (`balancerctl pod show`:
//!   PINNED, CLOSED; `/api/v1/pods`) and node-wide (`/api/v1/status`,
//!   metrics `balancer_pinned_connections{namespace}`,
//!   `balancer_pinned_connections_closed`,
//!   `balancer_pinned_connections_deferred`, `balancer_pinned_sweeps`,
//!   `balancer_pinned_sweep_errors{reason}`).
//! * Flags: `--procfs` (`BALANCER_PROCFS`, default `/proc`; the DaemonSet
//!   sets `/hostproc`), `--pinned-close-rate` (`BALANCER_PINNED_CLOSE_RATE`,
//!   default 10/s).

pub mod diag;
pub mod netns;
pub mod rate;
pub mod tally;

use std::{
    collections::HashSet,
    fmt::Debug,
    hash::Hash,
    net::{SocketAddr, SocketAddrV4},
    num::NonZeroU32,
    path::PathBuf,
    time::{Duration, Instant},
};

use diag::{DiagError, DiagSocket, Family, TcpSocket};
use netns::{NetnsCache, NetnsError, ProcScan};
use rate::RateLimiter;

/// Errors of one pod's sweep.
#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Diag(#[from] DiagError),
    #[error("closing pinned connection {local} -> {vip}")]
    Destroy {
        local: SocketAddr,
        vip: SocketAddr,
        #[source]
        source: DiagError,
    },
}

/// Settings of a [`Sweeper`].
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Where processes are read: `/proc`, or the host's `/proc` mounted
    /// elsewhere (`/hostproc`).
    pub procfs: PathBuf,
    /// At most this many connections closed per second on the node.
    pub destroy_rate: NonZeroU32,
    /// Closes allowed at once after a quiet period (1: spaced evenly).
    pub destroy_burst: NonZeroU32,
    /// How long one sweep may wait for the rate limit before deferring the
    /// rest to the next sweep.
    pub max_wait: Duration,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            procfs: PathBuf::from("/proc"),
            destroy_rate: NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
            destroy_burst: NonZeroU32::MIN,
            max_wait: Duration::from_secs(5),
        }
    }
}

/// One pod to sweep.
#[derive(Debug, Clone)]
pub struct PodTarget<K> {
    /// The caller's name for the pod (e.g. `namespace/name`).
    pub key: K,
    /// The pod's cgroup v2 directory in the host hierarchy.
    pub cgroup: PathBuf,
    /// Close the pod's pinned connections (otherwise only count them).
    pub remedy: bool,
}

/// What a sweep did with a pinned connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Left open: the pod's remedy is off, or an earlier close of the pod
    /// failed.
    Kept,
    /// Aborted.
    Closed,
    /// Closed by its owner between the dump and the destroy.
    Gone,
    /// Not closed this sweep: the rate limit's tokens came too late.
    Deferred,
    /// The kernel refused to close it ([`PodReport::error`] says why).
    Failed,
}

/// A pod's connection to a balanced VIP that bypasses the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedConn {
    /// The pod's end (an IPv4-mapped address for a dual-stack socket).
    pub local: SocketAddr,
    /// The VIP:port it is connected to (IPv4-mapped addresses unmapped).
    pub vip: SocketAddr,
    pub family: Family,
    /// The kernel's socket cookie.
    pub cookie: u64,
    pub action: Action,
}

/// One pod's result.
#[derive(Debug)]
pub struct PodReport<K> {
    pub key: K,
    /// Every pinned connection found, with what was done to it.
    pub conns: Vec<PinnedConn>,
    /// Why the pod's sweep stopped short (the pod's cgroup vanished, its
    /// namespace could not be read, a close was refused).
    pub error: Option<PinnedError>,
}

impl<K> PodReport<K> {
    /// Pinned connections found.
    pub fn pinned(&self) -> usize {
        self.conns.len()
    }

    /// Connections closed by this sweep.
    pub fn closed(&self) -> usize {
        self.count(Action::Closed)
    }

    /// Connections left for the next sweep by the rate limit.
    pub fn deferred(&self) -> usize {
        self.count(Action::Deferred)
    }

    /// Pinned connections still open after this sweep: kept, deferred, or
    /// refused by the kernel.
    pub fn open(&self) -> usize {
        self.count(Action::Kept) + self.count(Action::Deferred) + self.count(Action::Failed)
    }

    fn count(&self, action: Action) -> usize {
        self.conns.iter().filter(|c| c.action == action).count()
    }
}

/// Finds (and closes) pinned connections of pods, keeping each pod's
/// network namespace open between sweeps and the node-wide rate limit
/// across sweeps. Blocking: run it on a thread of its own or
/// `spawn_blocking`.
#[derive(Debug)]
pub struct Sweeper<K> {
    config: SweepConfig,
    cache: NetnsCache<K>,
    limiter: RateLimiter,
}

impl<K: Eq + Hash + Clone + Debug> Sweeper<K> {
    pub fn new(config: SweepConfig) -> Self {
        Sweeper {
            cache: NetnsCache::new(&config.procfs),
            limiter: RateLimiter::new(config.destroy_rate, config.destroy_burst),
            config,
        }
    }

    /// Sweeps `pods` for connections to `vips` (VIP:port; IPv4-mapped
    /// addresses are taken as IPv4). Pods not in `pods` are forgotten.
    pub fn sweep(&mut self, pods: &[PodTarget<K>], vips: &HashSet<SocketAddr>) -> Vec<PodReport<K>> {
        let vips: HashSet<SocketAddr> = vips.iter().copied().map(unmapped).collect();
        let live: HashSet<&K> = pods.iter().map(|p| &p.key).collect();
        self.cache.retain(|k| live.contains(k));
        let deadline = Instant::now() + self.config.max_wait;
        let mut scan = ProcScan::new(&self.config.procfs);
        pods.iter()
            .map(|pod| {
                let mut report = PodReport {
                    key: pod.key.clone(),
                    conns: Vec::new(),
                    error: None,
                };
                if let Err(e) = self.sweep_pod(pod, &vips, deadline, &mut scan, &mut report) {
                    tracing::debug!(pod = ?pod.key, cgroup = %pod.cgroup.display(), error = %crate::error::Chain(&e), "pinned-connection sweep");
                    report.error = Some(e);
                }
                report
            })
            .collect()
    }

    /// Pods whose network namespace is cached.
    pub fn cached_pods(&self) -> usize {
        self.cache.len()
    }

    fn sweep_pod(
        &mut self,
        pod: &PodTarget<K>,
        vips: &HashSet<SocketAddr>,
        deadline: Instant,
        scan: &mut ProcScan,
        report: &mut PodReport<K>,
    ) -> Result<(), PinnedError> {
        let (tree, Some(netns)) = self.cache.resolve(&pod.key, &pod.cgroup, scan)? else {
            return Ok(());
        };
        let mut sock = DiagSocket::open_in(netns.file())?;
        let pinned = find_pinned(&mut sock, &tree.ids, vips)?;
        let mut failure = None;
        for s in pinned {
            let vip = unmapped(s.remote);
            let action = if !pod.remedy || failure.is_some() {
                Action::Kept
            } else if !self.limiter.acquire_before(deadline) {
                Action::Deferred
            } else {
                match sock.destroy(&s) {
                    Ok(diag::Destroyed::Closed) => {
                        tracing::info!(pod = ?pod.key, local = %s.local, vip = %vip, "closed a connection that bypassed the agent");
                        Action::Closed
                    }
                    Ok(diag::Destroyed::Gone) => Action::Gone,
                    Err(source) => {
                        failure = Some(PinnedError::Destroy {
                            local: s.local,
                            vip,
                            source,
                        });
                        Action::Failed
                    }
                }
            };
            report.conns.push(PinnedConn {
                local: s.local,
                vip,
                family: s.family,
                cookie: s.cookie,
                action,
            });
        }
        failure.map_or(Ok(()), Err)
    }
}

/// The pinned sockets of `sock`'s namespace: ESTABLISHED TCP, IPv4 and
/// IPv6, remote in `vips`, created in one of the cgroups `cgroup_ids`.
pub fn find_pinned(
    sock: &mut DiagSocket,
    cgroup_ids: &HashSet<u64>,
    vips: &HashSet<SocketAddr>,
) -> Result<Vec<TcpSocket>, DiagError> {
    let mut all = sock.established_tcp(Family::V4)?;
    all.extend(sock.established_tcp(Family::V6)?);
    all.retain(|s| is_pinned(s, cgroup_ids, vips));
    Ok(all)
}

fn is_pinned(s: &TcpSocket, cgroup_ids: &HashSet<u64>, vips: &HashSet<SocketAddr>) -> bool {
    s.state == diag::TCP_ESTABLISHED
        && s.cgroup_id.is_some_and(|id| cgroup_ids.contains(&id))
        && vips.contains(&unmapped(s.remote))
}

/// An IPv4-mapped IPv6 socket address as the IPv4 one; others unchanged.
pub fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_unmap_and_others_stay() {
        let mapped: SocketAddr = "[::ffff:10.96.0.10]:50051".parse().expect("addr");
        assert_eq!(
            unmapped(mapped),
            "10.96.0.10:50051".parse::<SocketAddr>().expect("addr")
        );
        let v6: SocketAddr = "[fd00::10]:50051".parse().expect("addr");
        assert_eq!(unmapped(v6), v6);
        let v4: SocketAddr = "10.96.0.10:1".parse().expect("addr");
        assert_eq!(unmapped(v4), v4);
    }

    #[test]
    fn a_sweeper_can_move_to_a_blocking_thread() {
        fn is_send<T: Send + 'static>() {}
        is_send::<Sweeper<String>>();
    }

    #[test]
    fn default_config_is_bounded() {
        let c = SweepConfig::default();
        assert_eq!(c.procfs, PathBuf::from("/proc"));
        assert_eq!(c.destroy_rate.get(), 10);
        assert_eq!(c.destroy_burst.get(), 1);
    }
}
