//! Loads and attaches the kernel programs, and keeps their maps in step with
//! the agent's state.
//!
//! [`Kernel::load`] attaches five programs. At the attach cgroup (by default
//! the root of the host's cgroup v2 hierarchy; the kubelet's pod cgroup is a
//! narrower choice): `cgroup/connect4`, `cgroup/connect6` and `sock_ops`. At
//! the agent's own cgroup, which it never leaves: `cgroup/getsockopt` (only
//! the agent's accepted sockets ask for `SO_ORIGINAL_DST`), and `sock_ops`
//! too when the agent's cgroup is not below the attach cgroup (its accepted
//! sockets must be seen established). `sk_msg` on the fast-path SOCKHASH.
//! connect4/6 skip the agent's cgroup, so its own upstream connects are never
//! redirected.
//!
//! Nothing is pinned: the programs stay attached only as long as the
//! [`Kernel`] (and so the process) lives. A stopped or crashed agent leaves no
//! redirection behind — new connections go straight to the Service VIP
//! (fail-open). A stopping agent first detaches its connect programs
//! ([`Kernel::stop_redirecting`]) and then drains.
//!
//! Call [`Kernel::load`] from the network namespace the listener lives in.
//!
//! Sockets in the fast path can see a blocking `recv()` return `EAGAIN`
//! after an empty wakeup (a kernel property of sockmap sockets); use
//! non-blocking sockets or retry.

pub mod query;
mod redirects;
pub mod sockopt;

use std::{
    collections::HashSet,
    fs::File,
    net::{SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, SockHash},
    programs::{
        cgroup_sock_addr::CgroupSockAddrLinkId, CgroupAttachMode, CgroupSockAddr, CgroupSockopt, ProgramError,
        ProgramType, SkMsg, SockOps,
    },
    sys::BpfHelper,
    Ebpf, EbpfLoader, VerifierLogLevel,
};
/// `SO_MARK` that keeps a socket's connects from ever being redirected (a
/// second guard, besides the agent's own cgroup, for the agent's upstream
/// sockets).
pub use balancer_common::SKIP_MARK;
use balancer_common::{sizes, Config, Connection, ServiceKey, SockKey};
pub use balancer_common::{Program, ProgramCounters};
use query::Hook;
pub use redirects::KernelRedirects;

use crate::{
    cgroup::{self, CgroupError, OwnCgroup},
    redirect::Redirects,
};

/// The kernel programs, built by `build.rs` (empty when built with
/// `BALANCER_EBPF_STUB=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer"));

/// Set (to anything) for the kernel verifier's full log in load errors.
pub const VERIFIER_LOG_ENV: &str = "BALANCER_VERIFIER_LOG";

/// Program function names in the object (also what `bpftool prog` shows).
const PROG_CONNECT4: &str = "bal_connect4";
const PROG_CONNECT6: &str = "bal_connect6";
const PROG_SOCKOPS: &str = "bal_sockops";
const PROG_SK_MSG: &str = "bal_sk_msg";
const PROG_GETSOCKOPT: &str = "bal_getsockopt";

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("this agent was built with BALANCER_EBPF_STUB=1 and carries no kernel programs; rebuild without BALANCER_EBPF_STUB (needs bpf-linker: `cargo xtask setup`)")]
    StubObject,
    #[error(
        "not permitted to load eBPF programs (missing {0}): run as root, or with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"
    )]
    MissingCapability(&'static str),
    #[error("not permitted to load eBPF programs: run as root, or with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN")]
    NotPermitted(#[source] aya::EbpfError),
    #[error("this kernel does not support {0} programs (balancer needs Linux {KERNEL_FLOOR} or newer with cgroup BPF and sockmap)")]
    UnsupportedProgram(&'static str),
    #[error("this kernel lacks the BPF helper {helper} in {program} programs (balancer needs Linux {KERNEL_FLOOR} or newer)")]
    MissingHelper {
        program: &'static str,
        helper: &'static str,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(
        "the agent's own cgroup {own} contains the attach cgroup {attach}: every process there would count as the \
         agent and never be redirected; run the agent in a cgroup of its own (a container, a service)"
    )]
    AgentAboveAttach { own: PathBuf, attach: PathBuf },
    #[error("the attach cgroup {attach} is not in the host's cgroup v2 hierarchy {hierarchy}")]
    AttachOutsideHierarchy { attach: PathBuf, hierarchy: PathBuf },
    #[error("the listener {0} must be a concrete IPv4 address the pods can reach (not 0.0.0.0, not IPv6)")]
    BadListener(SocketAddr),
    #[error("loading the kernel programs")]
    Load(#[source] aya::EbpfError),
    #[error("kernel object has no {0}: the agent and its kernel programs do not match")]
    Missing(&'static str),
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is still attached after it was detached")]
    StillAttached(&'static str),
}

impl EbpfError {
    /// Whether this node cannot run balancer at all (no cgroup v2, an old
    /// kernel), as opposed to a configuration or permission problem: the
    /// agent then stays up, says so and reports not ready, rather than
    /// restarting in a loop.
    pub fn node_unsupported(&self) -> bool {
        match self {
            EbpfError::UnsupportedProgram(_) | EbpfError::MissingHelper { .. } => true,
            EbpfError::Cgroup(e) => matches!(
                e,
                CgroupError::NoCgroup2 | CgroupError::NotInCgroup2 | CgroupError::NoHostHierarchy
            ),
            _ => false,
        }
    }
}

/// The oldest kernel balancer runs on: `SO_NETNS_COOKIE` (5.14) and
/// `bpf_get_netns_cookie` in sock_ops, sk_msg and cgroup sockopt programs
/// (5.15). Checked at start by probing every helper the programs call.
pub const KERNEL_FLOOR: &str = "5.15";

/// How to load the kernel programs.
#[derive(Clone, Debug)]
pub struct KernelOptions {
    /// The host's cgroup v2 hierarchy (its root); `None`: found in
    /// `/proc/self/mountinfo`.
    pub hierarchy: Option<PathBuf>,
    /// cgroup v2 directory where connect4/6 and sock_ops attach; `None`: the
    /// root of the hierarchy.
    pub attach_cgroup: Option<PathBuf>,
    /// The agent's listener: redirected connects go here. A concrete IPv4
    /// address pods can reach (the node IP), never 127.0.0.1 or 0.0.0.0.
    pub listener: SocketAddrV4,
    /// Whether new connections enter the sk_msg fast path.
    pub fast_path: bool,
    /// Entries of the SERVICES map (VIP:port pairs): sized from the cluster
    /// at start (see [`services_capacity_for`]).
    pub services_capacity: u32,
}

impl KernelOptions {
    /// Attach at the cgroup v2 root with the fast path on.
    pub fn new(listener: SocketAddrV4) -> Self {
        KernelOptions {
            hierarchy: None,
            attach_cgroup: None,
            listener,
            fast_path: true,
            services_capacity: sizes::SERVICES,
        }
    }
}

/// The SERVICES map's size for `vips` VIP:port pairs: room for the cluster
/// to double before it fills, never below the default, at most 2^22.
pub fn services_capacity_for(vips: usize) -> u32 {
    let wanted = vips.saturating_mul(2).checked_next_power_of_two().unwrap_or(usize::MAX);
    u32::try_from(wanted)
        .unwrap_or(u32::MAX)
        .clamp(sizes::SERVICES, 1 << 22)
}

/// What the SERVICES map holds after an update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServicesFill {
    /// VIP:port pairs in the map.
    pub entries: usize,
    /// The map's size.
    pub capacity: u32,
    /// VIP:port pairs of the model that did not fit (the map is full):
    /// their connections are not redirected.
    pub overflow: Vec<SocketAddrV4>,
}

/// The agent's record of the SERVICES map: what it should hold, what it
/// holds, and what waits for room (in address order).
#[derive(Debug, Default)]
struct ServicesSet {
    wanted: HashSet<ServiceKey>,
    present: HashSet<ServiceKey>,
    pending: std::collections::BTreeSet<SocketAddrV4>,
}

impl ServicesSet {
    /// No longer wanted: whether the map holds it (and must drop it).
    fn remove(&mut self, key: ServiceKey) -> bool {
        self.wanted.remove(&key);
        self.pending.remove(&sockopt::socket_addr(key));
        self.present.remove(&key)
    }

    fn want(&mut self, key: ServiceKey) {
        if self.wanted.insert(key) && !self.present.contains(&key) {
            self.pending.insert(sockopt::socket_addr(key));
        }
    }

    fn inserted(&mut self, addr: SocketAddrV4) {
        self.pending.remove(&addr);
        self.present.insert(sockopt::endpoint(addr));
    }
}

/// Summed per-CPU counters of each program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub connect4: ProgramCounters,
    pub sock_ops: ProgramCounters,
    pub sk_msg: ProgramCounters,
    pub getsockopt: ProgramCounters,
    pub connect6: ProgramCounters,
}

impl Counters {
    pub fn get(&self, program: Program) -> ProgramCounters {
        match program {
            Program::Connect4 => self.connect4,
            Program::SockOps => self.sock_ops,
            Program::SkMsg => self.sk_msg,
            Program::GetSockopt => self.getsockopt,
            Program::Connect6 => self.connect6,
        }
    }

    fn get_mut(&mut self, program: Program) -> &mut ProgramCounters {
        match program {
            Program::Connect4 => &mut self.connect4,
            Program::SockOps => &mut self.sock_ops,
            Program::SkMsg => &mut self.sk_msg,
            Program::GetSockopt => &mut self.getsockopt,
            Program::Connect6 => &mut self.connect6,
        }
    }
}

/// A loaded kernel object (for `balancerctl` and `bpftool` cross-checks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelObject {
    /// Name as the kernel knows it (at most 15 bytes).
    pub name: String,
    /// Kernel id (`bpftool prog show id N` / `bpftool map show id N`).
    pub id: u32,
}

/// The loaded and attached kernel programs and their maps. Dropping it (or
/// the process dying) detaches everything.
pub struct Kernel {
    // Field order is drop order: programs (and their links) first.
    ebpf: Ebpf,
    config: Array<MapData, Config>,
    services: HashMap<MapData, ServiceKey, u32>,
    /// What SERVICES holds and should hold (only the agent writes it):
    /// updates are diffs, never a walk of the map.
    services_set: ServicesSet,
    services_capacity: u32,
    enrolled: HashMap<MapData, u64, u32>,
    counters: PerCpuArray<MapData, ProgramCounters>,
    redirects: Arc<KernelRedirects>,
    hierarchy: PathBuf,
    attach_cgroup: PathBuf,
    own: OwnCgroup,
    /// connect4/6 links, detached when the agent stops redirecting.
    connect_links: Vec<(&'static str, CgroupSockAddrLinkId)>,
    /// Kernel ids of this agent's connect programs.
    connect_ids: Vec<u32>,
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> EbpfError {
    move |source| EbpfError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> EbpfError {
    move |source| EbpfError::Program { name, source }
}

/// Effective capabilities of this process (`CapEff` in /proc/self/status).
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn check_permissions() -> Result<(), EbpfError> {
    const CAP_NET_ADMIN: u64 = 12;
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_BPF: u64 = 39;
    let Some(caps) = effective_caps() else {
        return Ok(()); // Cannot tell; let the kernel decide.
    };
    let has = |cap: u64| caps & (1 << cap) != 0;
    if !(has(CAP_BPF) || has(CAP_SYS_ADMIN)) {
        return Err(EbpfError::MissingCapability("CAP_BPF"));
    }
    if !has(CAP_NET_ADMIN) {
        return Err(EbpfError::MissingCapability("CAP_NET_ADMIN"));
    }
    Ok(())
}

fn check_program_types() -> Result<(), EbpfError> {
    for (kind, name) in [
        (ProgramType::CgroupSockAddr, "cgroup_sock_addr (connect4)"),
        (ProgramType::SockOps, "sock_ops"),
        (ProgramType::SkMsg, "sk_msg"),
        (ProgramType::CgroupSockopt, "cgroup_sockopt (getsockopt)"),
    ] {
        // An error here (e.g. EPERM) is reported better by the load itself.
        if let Ok(false) = aya::sys::is_program_supported(kind) {
            return Err(EbpfError::UnsupportedProgram(name));
        }
    }
    Ok(())
}

/// A program type, its name in messages, and the helpers (with their names)
/// its programs call.
type HelpersOf = (ProgramType, &'static str, &'static [(BpfHelper, &'static str)]);

/// Every helper the programs call, by program type: a kernel without one
/// would reject the program with a verifier log, so say which is missing.
fn check_helpers() -> Result<(), EbpfError> {
    let needed: [HelpersOf; 4] = [
        (
            ProgramType::CgroupSockAddr,
            "cgroup_sock_addr",
            &[
                (
                    BpfHelper::BPF_FUNC_get_current_ancestor_cgroup_id,
                    "bpf_get_current_ancestor_cgroup_id",
                ),
                (BpfHelper::BPF_FUNC_get_socket_cookie, "bpf_get_socket_cookie"),
            ],
        ),
        (
            ProgramType::SockOps,
            "sock_ops",
            &[
                (BpfHelper::BPF_FUNC_get_netns_cookie, "bpf_get_netns_cookie"),
                (BpfHelper::BPF_FUNC_get_socket_cookie, "bpf_get_socket_cookie"),
                (BpfHelper::BPF_FUNC_sock_hash_update, "bpf_sock_hash_update"),
                (BpfHelper::BPF_FUNC_sock_ops_cb_flags_set, "bpf_sock_ops_cb_flags_set"),
            ],
        ),
        (
            ProgramType::SkMsg,
            "sk_msg",
            &[
                (BpfHelper::BPF_FUNC_get_netns_cookie, "bpf_get_netns_cookie"),
                (BpfHelper::BPF_FUNC_msg_redirect_hash, "bpf_msg_redirect_hash"),
            ],
        ),
        (
            ProgramType::CgroupSockopt,
            "cgroup_sockopt",
            &[(BpfHelper::BPF_FUNC_get_netns_cookie, "bpf_get_netns_cookie")],
        ),
    ];
    for (kind, program, helpers) in needed {
        for &(helper, name) in helpers {
            // An error (EPERM) is reported better by the load itself.
            if let Ok(false) = aya::sys::is_helper_supported(kind, helper) {
                return Err(EbpfError::MissingHelper { program, helper: name });
            }
        }
    }
    Ok(())
}

fn load_error(source: aya::EbpfError) -> EbpfError {
    if crate::error::is_permission_denied(&source) {
        EbpfError::NotPermitted(source)
    } else {
        EbpfError::Load(source)
    }
}

impl Kernel {
    /// Loads the programs, writes the configuration and attaches everything
    /// (see the module docs for where). The agent stays in its own cgroup.
    /// Services and enrolled cgroups start empty: nothing is redirected
    /// until [`Kernel::set_services`] and [`Kernel::set_enrolled`] say so.
    pub fn load(opts: &KernelOptions) -> Result<Kernel, EbpfError> {
        if opts.listener.ip().is_unspecified() {
            return Err(EbpfError::BadListener(SocketAddr::V4(opts.listener)));
        }
        if OBJECT.is_empty() {
            return Err(EbpfError::StubObject);
        }
        check_permissions()?;
        let hierarchy = cgroup::host_hierarchy(opts.hierarchy.as_deref())?;
        let attach_cgroup = opts.attach_cgroup.clone().unwrap_or_else(|| hierarchy.clone());
        if !cgroup::is_cgroup2_dir(&attach_cgroup)? {
            return Err(CgroupError::NotCgroup2(attach_cgroup).into());
        }
        if !attach_cgroup.starts_with(&hierarchy) {
            return Err(EbpfError::AttachOutsideHierarchy {
                attach: attach_cgroup,
                hierarchy,
            });
        }
        let own = cgroup::own_cgroup(&hierarchy)?;
        if attach_cgroup.starts_with(&own.path) {
            return Err(EbpfError::AgentAboveAttach {
                own: own.path,
                attach: attach_cgroup,
            });
        }
        check_program_types()?;
        check_helpers()?;

        let mut loader = EbpfLoader::new();
        if std::env::var_os(VERIFIER_LOG_ENV).is_some() {
            loader.verifier_log_level(VerifierLogLevel::VERBOSE | VerifierLogLevel::STATS);
        }
        loader.map_max_entries("SERVICES", opts.services_capacity);
        let mut ebpf = loader.load(OBJECT).map_err(load_error)?;
        let take = |ebpf: &mut Ebpf, name: &'static str| ebpf.take_map(name).ok_or(EbpfError::Missing(name));
        let mut config: Array<MapData, Config> =
            Array::try_from(take(&mut ebpf, "CONFIG")?).map_err(map_err("CONFIG"))?;
        let services = HashMap::try_from(take(&mut ebpf, "SERVICES")?).map_err(map_err("SERVICES"))?;
        let enrolled = HashMap::try_from(take(&mut ebpf, "ENROLLED")?).map_err(map_err("ENROLLED"))?;
        let connections: HashMap<MapData, SockKey, Connection> =
            HashMap::try_from(take(&mut ebpf, "CONNECTIONS")?).map_err(map_err("CONNECTIONS"))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?).map_err(map_err("COUNTERS"))?;
        let sockets: SockHash<MapData, SockKey> =
            SockHash::try_from(take(&mut ebpf, "SOCKETS")?).map_err(map_err("SOCKETS"))?;
        let offers: HashMap<MapData, u64, u32> =
            HashMap::try_from(take(&mut ebpf, "UPSTREAM_OFFERS")?).map_err(map_err("UPSTREAM_OFFERS"))?;

        let agent_netns = sockopt::current_netns_cookie().map_err(|source| EbpfError::Io {
            what: "reading this network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14+)",
            source,
        })?;
        config
            .set(
                0,
                Config {
                    listener: sockopt::endpoint(opts.listener),
                    agent_netns,
                    agent_cgroup: own.id,
                    enabled: 1,
                    fast_path: u32::from(opts.fast_path),
                },
                0,
            )
            .map_err(map_err("CONFIG"))?;

        let open = |path: &Path| {
            File::open(path).map_err(|source| {
                EbpfError::Cgroup(CgroupError::Io {
                    path: path.to_owned(),
                    source,
                })
            })
        };
        let attach_fd = open(&attach_cgroup)?;
        let own_fd = open(&own.path)?;
        // Through bpf_link (Linux 5.7+) the attachment always coexists with
        // other programs on the cgroup (multi semantics); the kernel rejects
        // explicit flags there, so "Single" (no flags) it is.
        let mode = CgroupAttachMode::Single;
        // Attach order: the fast path, getsockopt and sock_ops before
        // connect4 starts redirecting.
        {
            let prog: &mut SkMsg = program(&mut ebpf, PROG_SK_MSG)?;
            prog.load().map_err(prog_err(PROG_SK_MSG))?;
            prog.attach(sockets.fd()).map_err(prog_err(PROG_SK_MSG))?;
        }
        {
            // Only the agent's accepted sockets ask for SO_ORIGINAL_DST:
            // nobody else's getsockopt runs it.
            let prog: &mut CgroupSockopt = program(&mut ebpf, PROG_GETSOCKOPT)?;
            prog.load().map_err(prog_err(PROG_GETSOCKOPT))?;
            prog.attach(&own_fd, mode).map_err(prog_err(PROG_GETSOCKOPT))?;
        }
        {
            let prog: &mut SockOps = program(&mut ebpf, PROG_SOCKOPS)?;
            prog.load().map_err(prog_err(PROG_SOCKOPS))?;
            prog.attach(&attach_fd, mode).map_err(prog_err(PROG_SOCKOPS))?;
            // The agent's accepted sockets must be seen established too.
            if !own.path.starts_with(&attach_cgroup) {
                prog.attach(&own_fd, mode).map_err(prog_err(PROG_SOCKOPS))?;
            }
        }
        let mut connect_links = Vec::new();
        let mut connect_ids = Vec::new();
        // connect6: IPv4 VIPs dialed as v4-mapped addresses by dual-stack sockets.
        for name in [PROG_CONNECT4, PROG_CONNECT6] {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load().map_err(prog_err(name))?;
            connect_links.push((name, prog.attach(&attach_fd, mode).map_err(prog_err(name))?));
            connect_ids.push(prog.info().map_err(prog_err(name))?.id());
        }
        tracing::info!(
            hierarchy = %hierarchy.display(),
            attach = %attach_cgroup.display(),
            own_cgroup = %own.path.display(),
            listener = %opts.listener,
            fast_path = opts.fast_path,
            "kernel programs attached"
        );
        Ok(Kernel {
            ebpf,
            config,
            services,
            enrolled,
            counters,
            redirects: Arc::new(KernelRedirects::new(
                Arc::new(Mutex::new(connections)),
                sockets,
                offers,
                agent_netns,
            )),
            hierarchy,
            attach_cgroup,
            own,
            connect_links,
            connect_ids,
            services_set: ServicesSet::default(),
            services_capacity: opts.services_capacity,
        })
    }

    /// Stops redirecting new connects: detaches connect4 and connect6 and
    /// checks with the kernel that they no longer run at the attach cgroup.
    /// Connections already redirected keep their fast path and original
    /// destination; new ones go to the Service directly (or to another
    /// agent's programs).
    pub fn stop_redirecting(&mut self) -> Result<(), EbpfError> {
        for (name, link) in std::mem::take(&mut self.connect_links) {
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            prog.detach(link).map_err(prog_err(name))?;
        }
        let fd = File::open(&self.attach_cgroup).map_err(|source| EbpfError::Io {
            what: "opening the attach cgroup",
            source,
        })?;
        for hook in [Hook::Connect4, Hook::Connect6] {
            let ids = query::attached(&fd, hook, false).map_err(|source| EbpfError::Io {
                what: "querying the attach cgroup's programs",
                source,
            })?;
            if ids.iter().any(|id| self.connect_ids.contains(id)) {
                return Err(EbpfError::StillAttached(hook.name()));
            }
        }
        tracing::info!(attach = %self.attach_cgroup.display(), "connect programs detached: no new connection is redirected");
        Ok(())
    }

    /// Whether the connect programs are attached (not yet stopped).
    pub fn redirecting(&self) -> bool {
        !self.connect_links.is_empty()
    }

    /// Other programs on the connect hooks of the attach cgroup (its
    /// ancestors' included): another CNI's socket load balancer that runs
    /// before balancer's program rewrites a VIP to a pod address first, and
    /// the agent never sees the VIP. Other balancer agents' programs (a
    /// rolling update) are not foreign.
    pub fn foreign_connect_programs(&self) -> Result<Vec<ForeignProgram>, EbpfError> {
        let fd = File::open(&self.attach_cgroup).map_err(|source| EbpfError::Io {
            what: "opening the attach cgroup",
            source,
        })?;
        let mut out = Vec::new();
        for hook in [Hook::Connect4, Hook::Connect6] {
            let ids = query::attached(&fd, hook, true).map_err(|source| EbpfError::Io {
                what: "querying the attach cgroup's programs",
                source,
            })?;
            out.extend(foreign_in(hook, &ids, &query::names(&ids), &self.connect_ids));
        }
        Ok(out)
    }

    /// Fast-path sockets (both ends of every redirected connection that
    /// entered it). A pod's socket leaves the map when the pod closes it; an
    /// agent that exits while one is still there would drop the bytes
    /// queued for the pod.
    pub fn fast_path_sockets(&self) -> usize {
        self.redirects.fast_path_sockets()
    }

    /// Makes the services map hold `vips` (IPv4 only; IPv6 entries are
    /// logged and ignored), as far as it has room: see
    /// [`Kernel::update_services`]. Compares with every wanted VIP: for
    /// updates by difference, use `update_services`.
    pub fn set_services(&mut self, vips: &[SocketAddr]) -> Result<ServicesFill, EbpfError> {
        let wanted: HashSet<SocketAddr> = vips.iter().copied().collect();
        let removed: Vec<SocketAddr> = self
            .services_set
            .wanted
            .iter()
            .map(|k| SocketAddr::V4(sockopt::socket_addr(*k)))
            .filter(|v| !wanted.contains(v))
            .collect();
        self.update_services(&removed, vips)
    }

    /// Takes `removed` VIPs out of the services map and puts `added` in,
    /// as far as it has room: removals go first, then what waits for room
    /// goes in, in address order, until the map is full. What does not fit
    /// is reported (and tried again at every update); every entry that fits
    /// works. IPv6 VIPs are logged and ignored. The work is proportional to
    /// the change (and to what waits for room), not to the map.
    pub fn update_services(&mut self, removed: &[SocketAddr], added: &[SocketAddr]) -> Result<ServicesFill, EbpfError> {
        for vip in removed {
            let SocketAddr::V4(v4) = vip else { continue };
            let key = sockopt::endpoint(*v4);
            if self.services_set.remove(key) {
                match self.services.remove(&key) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err("SERVICES")(e)),
                }
            }
        }
        for vip in added {
            match vip {
                SocketAddr::V4(v4) => self.services_set.want(sockopt::endpoint(*v4)),
                SocketAddr::V6(v6) => {
                    tracing::warn!(vip = %v6, "IPv6 service not redirected: only IPv4 is supported");
                }
            }
        }
        while let Some(addr) = self.services_set.pending.first().copied() {
            let key = sockopt::endpoint(addr);
            match self.services.insert(key, 0, 0) {
                Ok(()) => self.services_set.inserted(addr),
                Err(e) if crate::error::errno_of(&e) == Some(libc::E2BIG) => break,
                Err(e) => return Err(map_err("SERVICES")(e)),
            }
        }
        tracing::debug!(
            services = self.services_set.present.len(),
            overflow = self.services_set.pending.len(),
            "services map synced"
        );
        Ok(ServicesFill {
            entries: self.services_set.present.len(),
            capacity: self.services_capacity,
            overflow: self.services_set.pending.iter().copied().collect(),
        })
    }

    /// Makes the enrolled map hold exactly the cgroups `cgroup_dirs` (by
    /// cgroup id). A directory that is gone or not a cgroup v2 directory is
    /// logged and skipped (pods come and go).
    pub fn set_enrolled(&mut self, cgroup_dirs: &[PathBuf]) -> Result<(), EbpfError> {
        let mut wanted = HashSet::new();
        for dir in cgroup_dirs {
            match cgroup::cgroup_id(dir) {
                Ok(id) => {
                    wanted.insert(id);
                }
                Err(error) => tracing::warn!(%error, "cgroup not enrolled"),
            }
        }
        let present: HashSet<u64> = self
            .enrolled
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err("ENROLLED"))?;
        for id in present.iter().filter(|id| !wanted.contains(*id)) {
            match self.enrolled.remove(id) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("ENROLLED")(e)),
            }
        }
        for id in wanted.iter().filter(|id| !present.contains(id)) {
            self.enrolled.insert(id, 1, 0).map_err(map_err("ENROLLED"))?;
        }
        tracing::debug!(enrolled = wanted.len(), "enrolled map synced");
        Ok(())
    }

    /// The cgroup ids the enrolled map holds now.
    pub fn enrolled_ids(&self) -> Result<HashSet<u64>, EbpfError> {
        self.enrolled
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err("ENROLLED"))
    }

    /// Turns the fast path on or off for connections established from now
    /// on. Off keeps new sockets out of the SOCKHASH altogether.
    pub fn set_fast_path(&mut self, on: bool) -> Result<(), EbpfError> {
        let mut cfg = self.config.get(&0, 0).map_err(map_err("CONFIG"))?;
        cfg.fast_path = u32::from(on);
        self.config.set(0, cfg, 0).map_err(map_err("CONFIG"))?;
        tracing::info!(fast_path = on, "fast path switched");
        Ok(())
    }

    /// The kernel side of accepted connections, for the demultiplexer.
    pub fn redirects(&self) -> Arc<dyn Redirects> {
        self.redirects.clone()
    }

    /// The same handle, with its concrete type.
    pub fn kernel_redirects(&self) -> Arc<KernelRedirects> {
        self.redirects.clone()
    }

    /// Per-program counters summed over all CPUs.
    pub fn counters(&self) -> Result<Counters, EbpfError> {
        let mut out = Counters::default();
        for program in Program::ALL {
            let per_cpu = self.counters.get(&(program as u32), 0).map_err(map_err("COUNTERS"))?;
            let sum = out.get_mut(program);
            for value in per_cpu.iter() {
                sum.add(value);
            }
        }
        Ok(out)
    }

    /// The attached programs (names and kernel ids).
    pub fn programs(&self) -> Vec<KernelObject> {
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.info().ok())
            .map(|info| KernelObject {
                name: info.name_as_str().unwrap_or_default().to_owned(),
                id: info.id(),
            })
            .collect()
    }

    /// The maps the programs use (names and kernel ids).
    pub fn maps(&self) -> Vec<KernelObject> {
        let mut ids: Vec<u32> = self
            .ebpf
            .programs()
            .filter_map(|(_, p)| p.info().ok())
            .filter_map(|info| info.map_ids().ok().flatten())
            .flatten()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .filter_map(|id| aya::maps::MapInfo::from_id(id).ok())
            .map(|info| KernelObject {
                name: info.name_as_str().unwrap_or_default().to_owned(),
                id: info.id(),
            })
            .collect()
    }

    /// The cgroup the programs are attached at.
    pub fn attach_cgroup(&self) -> &Path {
        &self.attach_cgroup
    }

    /// The agent's own cgroup, in the host's hierarchy.
    pub fn agent_cgroup(&self) -> &Path {
        &self.own.path
    }

    /// The host's cgroup v2 hierarchy the agent works in.
    pub fn hierarchy(&self) -> &Path {
        &self.hierarchy
    }
}

/// A connect program at the attach cgroup that is not balancer's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignProgram {
    /// `connect4` or `connect6`.
    pub hook: &'static str,
    pub id: u32,
    pub name: String,
    /// Runs before balancer's program: it sees (and may rewrite) the VIP
    /// first, which leaves balancer nothing to redirect.
    pub runs_first: bool,
}

/// The foreign programs among `ids` (run order) of one hook, given this
/// agent's own program ids; programs named `bal_*` belong to balancer (this
/// agent or another during a rolling update).
fn foreign_in(
    hook: Hook,
    ids: &[u32],
    names: &std::collections::HashMap<u32, String>,
    ours: &[u32],
) -> Vec<ForeignProgram> {
    let our_pos = ids.iter().position(|id| ours.contains(id));
    ids.iter()
        .enumerate()
        .filter_map(|(pos, id)| {
            let name = names.get(id).cloned().unwrap_or_default();
            if ours.contains(id) || name.starts_with("bal_") {
                return None;
            }
            Some(ForeignProgram {
                hook: hook.name(),
                id: *id,
                name,
                runs_first: our_pos.is_none_or(|o| pos < o),
            })
        })
        .collect()
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, EbpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(EbpfError::Missing(name))?
        .try_into()
        .map_err(prog_err(name))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn unspecified_listener_is_refused_before_anything_is_loaded() {
        let opts = KernelOptions::new(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 15001));
        let err = Kernel::load(&opts).err().expect("0.0.0.0 is refused");
        assert!(matches!(err, EbpfError::BadListener(_)), "{err}");
    }

    #[test]
    fn stub_build_says_how_to_get_the_programs() {
        let text = EbpfError::StubObject.to_string();
        assert!(
            text.contains("BALANCER_EBPF_STUB") && text.contains("bpf-linker"),
            "{text}"
        );
        if OBJECT.is_empty() {
            // This build is the stub: loading must say so, whatever the privileges.
            let opts = KernelOptions::new(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 15001));
            assert!(matches!(Kernel::load(&opts), Err(EbpfError::StubObject)));
        }
    }

    #[test]
    fn a_foreign_connect_program_before_ours_is_flagged() {
        let names: std::collections::HashMap<u32, String> = [
            (1, "cil_sock4_connect".to_owned()),
            (2, "bal_connect4".to_owned()),
            (3, "bal_connect4".to_owned()),
            (4, "calico_connect_v4".to_owned()),
        ]
        .into_iter()
        .collect();
        // Run order 1, 2 (ours), 3 (another balancer agent), 4.
        let found = foreign_in(Hook::Connect4, &[1, 2, 3, 4], &names, &[2]);
        assert_eq!(
            found,
            vec![
                ForeignProgram {
                    hook: "connect4",
                    id: 1,
                    name: "cil_sock4_connect".into(),
                    runs_first: true
                },
                ForeignProgram {
                    hook: "connect4",
                    id: 4,
                    name: "calico_connect_v4".into(),
                    runs_first: false
                },
            ]
        );
        // Only balancer's own programs: nothing foreign.
        assert!(foreign_in(Hook::Connect6, &[2, 3], &names, &[2]).is_empty());
        // Ours detached (stopping): whatever is left runs first.
        assert!(foreign_in(Hook::Connect4, &[4], &names, &[2])[0].runs_first);
    }

    #[test]
    fn permission_errors_are_told_by_errno_not_text() {
        let failed = |errno| {
            aya::EbpfError::ProgramError(ProgramError::SyscallError(aya::sys::SyscallError {
                call: "bpf_prog_load",
                io_error: std::io::Error::from_raw_os_error(errno),
            }))
        };
        assert!(matches!(load_error(failed(libc::EPERM)), EbpfError::NotPermitted(_)));
        assert!(matches!(load_error(failed(libc::EACCES)), EbpfError::NotPermitted(_)));
        assert!(matches!(load_error(failed(libc::EINVAL)), EbpfError::Load(_)));
        // The errno stays reachable through the agent's own errors.
        let wrapped = EbpfError::Io {
            what: "x",
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(crate::error::errno_of(&wrapped), Some(libc::EACCES));
    }

    #[test]
    fn the_services_map_is_sized_for_twice_the_cluster() {
        assert_eq!(services_capacity_for(0), sizes::SERVICES);
        assert_eq!(services_capacity_for(5_000), sizes::SERVICES);
        assert_eq!(services_capacity_for(10_000), 32_768);
        assert_eq!(services_capacity_for(50_000), 131_072);
        assert_eq!(services_capacity_for(usize::MAX), 1 << 22);
    }

    #[test]
    fn counters_are_reported_per_program() {
        let mut c = Counters::default();
        c.get_mut(Program::SkMsg).bytes = 7;
        assert_eq!(c.get(Program::SkMsg).bytes, 7);
        assert_eq!(c.get(Program::Connect4), ProgramCounters::default());
    }
}
