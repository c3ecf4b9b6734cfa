//! The maps shared with the agent (names are what `bpftool map` shows) and
//! the per-program counters.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, SockHash},
};
use balancer_common::{
    sizes, Config, Connection, EnrolledValue, Ipv4Endpoint, Program, ProgramCounters, ServiceKey, ServiceValue, SockKey,
};

/// Runtime configuration written by the loader (one entry).
#[map(name = "CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Balanced VIP:port pairs.
#[map(name = "SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(sizes::SERVICES, 0);

/// Enrolled cgroup ids (a pod's cgroup; its descendants are enrolled too).
#[map(name = "ENROLLED")]
pub static ENROLLED: HashMap<u64, EnrolledValue> = HashMap::with_max_entries(sizes::ENROLLED, 0);

/// Original destination by socket cookie, between connect and established.
#[map(name = "ORIG_BY_COOKIE")]
pub static ORIG_BY_COOKIE: LruHashMap<u64, Ipv4Endpoint> = LruHashMap::with_max_entries(sizes::ORIGINAL_BY_COOKIE, 0);

/// The agent's upstream sockets offered to the fast path, by socket cookie
/// (written by the agent before it connects to an endpoint).
#[map(name = "UPSTREAM_OFFERS")]
pub static UPSTREAM_OFFERS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(sizes::UPSTREAM_OFFERS, 0);

/// Redirected connections, keyed by the agent side's socket.
#[map(name = "CONNECTIONS")]
pub static CONNECTIONS: LruHashMap<SockKey, Connection> = LruHashMap::with_max_entries(sizes::CONNECTIONS, 0);

/// Sockets in the fast path; sk_msg is attached to this map.
#[map(name = "SOCKETS")]
pub static SOCKETS: SockHash<SockKey> = SockHash::with_max_entries(sizes::SOCKETS, 0);

/// Per-program counters, one slot per [`Program`].
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<ProgramCounters> = PerCpuArray::with_max_entries(Program::COUNT, 0);

/// The configuration, once the loader has enabled it.
#[inline(always)]
pub fn config() -> Option<Config> {
    let cfg = CONFIG.get_ptr(0)?;
    // SAFETY: array values are always valid memory; Config is plain integers.
    let cfg = unsafe { *cfg };
    (cfg.enabled != 0).then_some(cfg)
}

/// What a program did with one event.
pub enum Outcome {
    /// It did its job.
    Redirected,
    /// It let the event through.
    Passed,
    /// sk_msg: the socket's first message found no peer; it stays on TCP.
    Pinned,
    /// Not an event this program counts.
    Ignored,
}

/// Adds `outcome` (or an error) to `program`'s counters on this CPU.
#[inline(always)]
pub fn count(program: Program, outcome: Result<Outcome, ()>) {
    let Some(counters) = COUNTERS.get_ptr_mut(program as u32) else {
        return;
    };
    // SAFETY: per-CPU slot of a fixed-size array; programs do not nest on
    // one CPU for the same slot in a way that matters for statistics.
    let c = unsafe { &mut *counters };
    match outcome {
        Ok(Outcome::Redirected) => c.redirected += 1,
        Ok(Outcome::Passed) => c.passed += 1,
        Ok(Outcome::Pinned) => {
            c.pinned += 1;
            c.passed += 1;
        }
        Ok(Outcome::Ignored) => {}
        Err(()) => c.errors += 1,
    }
}

/// Adds redirected bytes to `program`'s counters on this CPU. (A separate
/// call rather than a payload in [`Outcome`]: the verifier rejects reading the
/// undefined payload register LLVM copies around for the other variants.)
#[inline(always)]
pub fn count_bytes(program: Program, bytes: u64) {
    if let Some(counters) = COUNTERS.get_ptr_mut(program as u32) {
        // SAFETY: as in `count`.
        unsafe { (*counters).bytes += bytes };
    }
}
