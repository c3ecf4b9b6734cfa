//! Loads and attaches the kernel programs, and keeps their maps in step with
//! the agent's state.
//!
//! [`Kernel::load`] attaches four programs at a cgroup v2 directory (by
//! default the root of the hierarchy) — `cgroup/connect4`, `sock_ops`,
//! `cgroup/getsockopt`, and `sk_msg` on the fast-path SOCKHASH — and moves
//! the calling process into its own child cgroup (`balancer-agent`) below
//! that point, so that its accepted sockets see sock_ops and getsockopt while
//! its own connects are never redirected.
//!
//! Nothing is pinned: the programs stay attached only as long as the
//! [`Kernel`] (and so the process) lives. A stopped or crashed agent leaves no
//! redirection behind — new connections go straight to the Service VIP
//! (fail-open).
//!
//! Call [`Kernel::load`] from the network namespace the listener lives in,
//! and before creating the listener socket (a socket belongs to the cgroup
//! its creator was in).
//!
//! Sockets in the fast path can see a blocking `recv()` return `EAGAIN`
//! after an empty wakeup (a kernel property of sockmap sockets); use
//! non-blocking sockets or retry.

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
    programs::{CgroupAttachMode, CgroupSockAddr, CgroupSockopt, ProgramError, ProgramType, SkMsg, SockOps},
    Ebpf, EbpfLoader, VerifierLogLevel,
};
/// `SO_MARK` that keeps a socket's connects from ever being redirected (a
/// second guard, besides the agent's own cgroup, for the agent's upstream
/// sockets).
pub use balancer_common::SKIP_MARK;
use balancer_common::{Config, Connection, ServiceKey, SockKey};
pub use balancer_common::{Program, ProgramCounters};
pub use redirects::KernelRedirects;

use crate::{
    cgroup::{self, CgroupError, AGENT_CGROUP_NAME},
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
    #[error("not permitted to load eBPF programs ({detail}): run as root, or with CAP_BPF and CAP_NET_ADMIN")]
    NotPermitted { detail: String },
    #[error("this kernel does not support {0} programs (balancer needs Linux 5.15+ with cgroup BPF and sockmap)")]
    UnsupportedProgram(&'static str),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("the listener {0} must be a concrete IPv4 address the pods can reach (not 0.0.0.0, not IPv6)")]
    BadListener(SocketAddr),
    #[error("loading the kernel programs: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("kernel object has no {0}: the agent and its kernel programs do not match")]
    Missing(&'static str),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// How to load the kernel programs.
#[derive(Clone, Debug)]
pub struct KernelOptions {
    /// cgroup v2 directory to attach at; `None`: the root of the hierarchy.
    pub attach_cgroup: Option<PathBuf>,
    /// The agent's listener: redirected connects go here. A concrete IPv4
    /// address pods can reach (the node IP), never 127.0.0.1 or 0.0.0.0.
    pub listener: SocketAddrV4,
    /// Whether new connections enter the sk_msg fast path.
    pub fast_path: bool,
}

impl KernelOptions {
    /// Attach at the cgroup v2 root with the fast path on.
    pub fn new(listener: SocketAddrV4) -> Self {
        KernelOptions {
            attach_cgroup: None,
            listener,
            fast_path: true,
        }
    }
}

/// Summed per-CPU counters of each program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub connect4: ProgramCounters,
    pub sock_ops: ProgramCounters,
    pub sk_msg: ProgramCounters,
    pub getsockopt: ProgramCounters,
}

impl Counters {
    pub fn get(&self, program: Program) -> ProgramCounters {
        match program {
            Program::Connect4 => self.connect4,
            Program::SockOps => self.sock_ops,
            Program::SkMsg => self.sk_msg,
            Program::GetSockopt => self.getsockopt,
        }
    }

    fn get_mut(&mut self, program: Program) -> &mut ProgramCounters {
        match program {
            Program::Connect4 => &mut self.connect4,
            Program::SockOps => &mut self.sock_ops,
            Program::SkMsg => &mut self.sk_msg,
            Program::GetSockopt => &mut self.getsockopt,
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
    enrolled: HashMap<MapData, u64, u32>,
    counters: PerCpuArray<MapData, ProgramCounters>,
    _sockets: SockHash<MapData, SockKey>,
    redirects: Arc<KernelRedirects>,
    attach_cgroup: PathBuf,
    agent_cgroup: PathBuf,
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
        return Err(EbpfError::NotPermitted {
            detail: "missing CAP_BPF".into(),
        });
    }
    if !has(CAP_NET_ADMIN) {
        return Err(EbpfError::NotPermitted {
            detail: "missing CAP_NET_ADMIN".into(),
        });
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

fn load_error(source: aya::EbpfError) -> EbpfError {
    let text = format!("{source:?}");
    if text.contains("PermissionDenied") || text.contains("EPERM") {
        EbpfError::NotPermitted {
            detail: source.to_string(),
        }
    } else {
        EbpfError::Load(source)
    }
}

impl Kernel {
    /// Loads the programs, moves this process into `<attach>/balancer-agent`,
    /// writes the configuration and attaches everything. Services and
    /// enrolled cgroups start empty: nothing is redirected until
    /// [`Kernel::set_services`] and [`Kernel::set_enrolled`] say so.
    pub fn load(opts: &KernelOptions) -> Result<Kernel, EbpfError> {
        if opts.listener.ip().is_unspecified() {
            return Err(EbpfError::BadListener(SocketAddr::V4(opts.listener)));
        }
        if OBJECT.is_empty() {
            return Err(EbpfError::StubObject);
        }
        check_permissions()?;
        let mount = cgroup::cgroup2_mount()?;
        let attach_cgroup = opts.attach_cgroup.clone().unwrap_or(mount);
        if !cgroup::is_cgroup2_dir(&attach_cgroup)? {
            return Err(CgroupError::NotCgroup2(attach_cgroup).into());
        }
        check_program_types()?;

        let mut loader = EbpfLoader::new();
        if std::env::var_os(VERIFIER_LOG_ENV).is_some() {
            loader.verifier_log_level(VerifierLogLevel::VERBOSE | VerifierLogLevel::STATS);
        }
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

        // The agent's own cgroup, below the attach point: its accepted
        // sockets get sock_ops and getsockopt; connect4 skips its connects.
        let agent_cgroup = attach_cgroup.join(AGENT_CGROUP_NAME);
        cgroup::move_self_into(&agent_cgroup)?;
        let agent_cgroup_id = cgroup::cgroup_id(&agent_cgroup)?;
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
                    agent_cgroup: agent_cgroup_id,
                    enabled: 1,
                    fast_path: u32::from(opts.fast_path),
                },
                0,
            )
            .map_err(map_err("CONFIG"))?;

        let cgroup_fd = File::open(&attach_cgroup).map_err(|source| {
            EbpfError::Cgroup(CgroupError::Io {
                path: attach_cgroup.clone(),
                source,
            })
        })?;
        // Through bpf_link (Linux 5.7+) the attachment always coexists with
        // other programs on the cgroup (multi semantics); the kernel rejects
        // explicit flags there, so "Single" (no flags) it is.
        let mode = CgroupAttachMode::Single;
        // Attach order: the fast path and getsockopt before connect4 starts
        // redirecting.
        {
            let prog: &mut SkMsg = program(&mut ebpf, PROG_SK_MSG)?;
            prog.load().map_err(prog_err(PROG_SK_MSG))?;
            prog.attach(sockets.fd()).map_err(prog_err(PROG_SK_MSG))?;
        }
        {
            let prog: &mut CgroupSockopt = program(&mut ebpf, PROG_GETSOCKOPT)?;
            prog.load().map_err(prog_err(PROG_GETSOCKOPT))?;
            prog.attach(&cgroup_fd, mode).map_err(prog_err(PROG_GETSOCKOPT))?;
        }
        {
            let prog: &mut SockOps = program(&mut ebpf, PROG_SOCKOPS)?;
            prog.load().map_err(prog_err(PROG_SOCKOPS))?;
            prog.attach(&cgroup_fd, mode).map_err(prog_err(PROG_SOCKOPS))?;
        }
        {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, PROG_CONNECT4)?;
            prog.load().map_err(prog_err(PROG_CONNECT4))?;
            prog.attach(&cgroup_fd, mode).map_err(prog_err(PROG_CONNECT4))?;
        }
        {
            // IPv4 VIPs dialed as v4-mapped addresses by dual-stack sockets.
            let prog: &mut CgroupSockAddr = program(&mut ebpf, PROG_CONNECT6)?;
            prog.load().map_err(prog_err(PROG_CONNECT6))?;
            prog.attach(&cgroup_fd, mode).map_err(prog_err(PROG_CONNECT6))?;
        }
        tracing::info!(
            attach = %attach_cgroup.display(),
            agent_cgroup = %agent_cgroup.display(),
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
            _sockets: sockets,
            redirects: Arc::new(KernelRedirects::new(Arc::new(Mutex::new(connections)))),
            attach_cgroup,
            agent_cgroup,
        })
    }

    /// Makes the services map hold exactly `vips` (IPv4 only; IPv6 entries
    /// are logged and ignored).
    pub fn set_services(&mut self, vips: &[SocketAddr]) -> Result<(), EbpfError> {
        let mut wanted = HashSet::new();
        for vip in vips {
            match vip {
                SocketAddr::V4(v4) => {
                    wanted.insert(sockopt::endpoint(*v4));
                }
                SocketAddr::V6(v6) => {
                    tracing::warn!(vip = %v6, "IPv6 service not redirected: only IPv4 is supported");
                }
            }
        }
        let present: Vec<ServiceKey> = self
            .services
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err("SERVICES"))?;
        for key in present.iter().filter(|k| !wanted.contains(*k)) {
            match self.services.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("SERVICES")(e)),
            }
        }
        for key in wanted.iter().filter(|k| !present.contains(k)) {
            self.services.insert(key, 0, 0).map_err(map_err("SERVICES"))?;
        }
        tracing::debug!(services = wanted.len(), "services map synced");
        Ok(())
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
        let present: Vec<u64> = self
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

    /// The agent's own cgroup (below the attach point).
    pub fn agent_cgroup(&self) -> &Path {
        &self.agent_cgroup
    }
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
    fn counters_are_reported_per_program() {
        let mut c = Counters::default();
        c.get_mut(Program::SkMsg).bytes = 7;
        assert_eq!(c.get(Program::SkMsg).bytes, 7);
        assert_eq!(c.get(Program::Connect4), ProgramCounters::default());
    }
}
