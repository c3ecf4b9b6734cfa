//! Reading the agent's programs and maps from the kernel by id (what
//! `bpftool prog/map` does): for the admin API, given the ids the loader
//! created, and for `balancerctl --kernel`, which finds them by name.
//! Needs CAP_SYS_ADMIN (root).

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use aya::{
    maps::{loaded_maps, MapInfo, MapType},
    programs::{loaded_programs, ProgramInfo},
};

use super::{api, decode, KernelView};

/// Kernel program names of the agent's programs start with one of these
/// (`bal_connect4`, ...; kernel names are cut at 15 bytes).
pub const PROGRAM_PREFIXES: [&str; 2] = ["bal_", "balancer_"];

/// Why the kernel's programs or maps could not be read. Every variant keeps
/// the kernel's answer as its source: [`KernelError::is_permission_denied`]
/// tells a missing privilege by its errno.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("listing the kernel's BPF programs")]
    Programs(#[source] aya::programs::ProgramError),
    #[error("listing the kernel's BPF maps")]
    Maps(#[source] aya::maps::MapError),
    #[error("opening map {map}")]
    OpenMap {
        map: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("reading the keys of map {map}")]
    ReadMap {
        map: String,
        #[source]
        source: io::Error,
    },
    #[error("reading {file} (the number of CPUs, for per-CPU values)")]
    Cpus {
        file: &'static str,
        #[source]
        source: io::Error,
    },
}

impl KernelError {
    /// The kernel refused for lack of privileges (`EPERM`/`EACCES`):
    /// reading other processes' programs and maps needs root
    /// (CAP_SYS_ADMIN).
    pub fn is_permission_denied(&self) -> bool {
        crate::error::is_permission_denied(self)
    }
}

fn cpus() -> Result<usize, KernelError> {
    aya::util::nr_cpus().map_err(|(file, source)| KernelError::Cpus { file, source })
}

/// The short name of a program from its kernel type (the agent loads one of
/// each): what `balancer_common::Program::name()` calls it.
fn short_name(prog_type: &str, kernel_name: &str) -> String {
    match prog_type {
        "cgroup_sock_addr" if kernel_name.contains("connect6") => "connect6",
        "cgroup_sock_addr" => "connect4",
        "sock_ops" => "sock_ops",
        "sk_msg" => "sk_msg",
        "cgroup_sockopt" => "getsockopt",
        _ => kernel_name,
    }
    .to_owned()
}

/// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` → `cgroup_sock_addr`.
fn type_name(debug: String, prefix: &str) -> String {
    debug.strip_prefix(prefix).unwrap_or(&debug).to_ascii_lowercase()
}

fn map_type_name(t: Result<MapType, aya::maps::MapError>) -> String {
    match t {
        Ok(t) => {
            let s = format!("{t:?}");
            // CamelCase → snake_case, as bpftool names them.
            let mut out = String::new();
            for (i, ch) in s.chars().enumerate() {
                if ch.is_ascii_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(ch.to_ascii_lowercase());
            }
            out.replace("per_cpu", "percpu")
        }
        Err(_) => "unknown".to_owned(),
    }
}

/// Reads programs and maps by id.
#[derive(Debug, Clone, Default)]
pub struct KernelReader {
    /// Only these program ids (the agent's own); `None`: every program whose
    /// name starts with one of [`PROGRAM_PREFIXES`].
    pub program_ids: Option<Vec<u32>>,
}

impl KernelReader {
    /// The programs with these ids and their maps.
    pub fn for_programs(ids: Vec<u32>) -> Self {
        KernelReader { program_ids: Some(ids) }
    }

    /// Every balancer program loaded on this machine.
    pub fn discover() -> Self {
        KernelReader { program_ids: None }
    }

    fn infos(&self) -> Result<Vec<ProgramInfo>, KernelError> {
        let mut out = Vec::new();
        for p in loaded_programs() {
            let p = p.map_err(KernelError::Programs)?;
            let keep = match &self.program_ids {
                Some(ids) => ids.contains(&p.id()),
                None => p
                    .name_as_str()
                    .is_some_and(|n| PROGRAM_PREFIXES.iter().any(|x| n.starts_with(x))),
            };
            if keep {
                out.push(p);
            }
        }
        Ok(out)
    }

    pub fn programs(&self) -> Result<Vec<api::Program>, KernelError> {
        let infos = self.infos()?;
        let links = cgroup_links().unwrap_or_default();
        let mut cgroups = decode::CgroupNames::default();
        let counters = self.counters().unwrap_or_default();
        let mut out = Vec::new();
        for p in infos {
            let kernel_name = p.name_as_str().unwrap_or("").to_owned();
            let prog_type = type_name(format!("{:?}", p.program_type()), "BPF_PROG_TYPE_");
            let name = short_name(&prog_type, &kernel_name);
            let (attach_type, attach_point) = match links.get(&p.id()) {
                Some(l) => (
                    Some(attach_type_name(l.attach_type)),
                    Some(match cgroups.name(l.cgroup_id) {
                        Some(path) => format!("cgroup {}", path.display()),
                        None => format!("cgroup id {}", l.cgroup_id),
                    }),
                ),
                None if prog_type == "sk_msg" => (Some("sk_msg_verdict".into()), Some("map SOCKETS".into())),
                None => (None, None),
            };
            out.push(api::Program {
                id: p.id(),
                counters: counters.get(&name).cloned().unwrap_or_default(),
                name,
                prog_type,
                attach_type,
                attach_point,
                run_count: (p.run_count() > 0 || p.run_time().as_nanos() > 0).then(|| p.run_count()),
                run_time_ns: (p.run_count() > 0).then(|| p.run_time().as_nanos() as u64),
            });
        }
        out.sort_by_key(|p| p.id);
        Ok(out)
    }

    fn map_infos(&self) -> Result<Vec<MapInfo>, KernelError> {
        let mut ids = std::collections::BTreeSet::new();
        for p in self.infos()? {
            if let Ok(Some(m)) = p.map_ids() {
                ids.extend(m);
            }
        }
        let mut out = Vec::new();
        for m in loaded_maps() {
            let m = m.map_err(KernelError::Maps)?;
            if ids.contains(&m.id()) {
                out.push(m);
            }
        }
        Ok(out)
    }

    pub fn maps(&self) -> Result<Vec<api::Map>, KernelError> {
        let mut out = Vec::new();
        for m in self.map_infos()? {
            let entries = m
                .fd()
                .ok()
                .and_then(|fd| count_keys(fd.as_fd(), m.key_size() as usize).ok());
            out.push(api::Map {
                id: m.id(),
                name: m.name_as_str().unwrap_or("").to_owned(),
                map_type: map_type_name(m.map_type()),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries: m.max_entries(),
                entries,
            });
        }
        out.sort_by_key(|m| m.id);
        Ok(out)
    }

    /// Every entry of the map named `name` (or with that numeric id).
    pub fn dump(&self, name: &str) -> Result<Option<api::MapDump>, KernelError> {
        let Some(m) = self
            .map_infos()?
            .into_iter()
            .find(|m| m.name_as_str() == Some(name) || m.id().to_string() == name)
        else {
            return Ok(None);
        };
        let map_name = m.name_as_str().unwrap_or("").to_owned();
        let fd = m.fd().map_err(|source| KernelError::OpenMap {
            map: map_name.clone(),
            source,
        })?;
        let per_cpu = matches!(
            m.map_type(),
            Ok(MapType::PerCpuArray | MapType::PerCpuHash | MapType::LruPerCpuHash)
        );
        let value_len = if per_cpu {
            (m.value_size() as usize).div_ceil(8) * 8 * cpus()?
        } else {
            m.value_size() as usize
        };
        let mut cgroups = decode::CgroupNames::default();
        let mut entries = Vec::new();
        let keys = keys(fd.as_fd(), m.key_size() as usize).map_err(|source| KernelError::ReadMap {
            map: map_name.clone(),
            source,
        })?;
        for key in keys {
            let value = match lookup(fd.as_fd(), &key, value_len) {
                Ok(Some(v)) => v,
                Ok(None) => continue, // deleted meanwhile
                // Socket maps do not hand out their values to user space.
                Err(_) => Vec::new(),
            };
            let (k, v) = decode::entry(&map_name, &key, &value, &mut cgroups);
            entries.push(api::MapEntry {
                key: k,
                value: v,
                key_hex: decode::hex(&key),
                value_hex: decode::hex(&value),
            });
        }
        Ok(Some(api::MapDump {
            id: m.id(),
            name: map_name,
            entries,
        }))
    }

    /// Each program's counters (from the `COUNTERS` map), by short name.
    pub fn counters(&self) -> Result<BTreeMap<String, BTreeMap<String, u64>>, KernelError> {
        let Some(m) = self
            .map_infos()?
            .into_iter()
            .find(|m| m.name_as_str() == Some("COUNTERS"))
        else {
            return Ok(BTreeMap::new());
        };
        let fd = m.fd().map_err(|source| KernelError::OpenMap {
            map: "COUNTERS".to_owned(),
            source,
        })?;
        let len = (m.value_size() as usize).div_ceil(8) * 8 * cpus()?;
        let mut out = BTreeMap::new();
        for p in balancer_common::Program::ALL {
            let key = (p as u32).to_ne_bytes();
            if let Ok(Some(v)) = lookup(fd.as_fd(), &key, len) {
                out.insert(p.name().to_owned(), decode::counters_map(&decode::per_cpu_counters(&v)));
            }
        }
        Ok(out)
    }
}

impl KernelView for KernelReader {
    fn attached(&self) -> bool {
        match (&self.program_ids, self.infos()) {
            (Some(ids), Ok(infos)) => !ids.is_empty() && infos.len() == ids.len(),
            (None, Ok(infos)) => !infos.is_empty(),
            (_, Err(_)) => false,
        }
    }

    fn programs(&self) -> Result<Vec<api::Program>, KernelError> {
        KernelReader::programs(self)
    }

    fn maps(&self) -> Result<Vec<api::Map>, KernelError> {
        KernelReader::maps(self)
    }

    fn map_dump(&self, name: &str) -> Result<Option<api::MapDump>, KernelError> {
        self.dump(name)
    }
}

// --- raw bpf(2) calls that aya 0.14 does not expose for untyped maps ---

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_LINK_TYPE_CGROUP: u32 = 3;
/// Upper bound on entries read from one map (the largest map has 131,072).
const MAX_ENTRIES: usize = 1 << 20;

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix of the given
    // size for `cmd`; pointers inside it point to live buffers of the sizes
    // the kernel expects (checked by the callers).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            std::mem::size_of::<T>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn next_key(fd: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let mut attr = MapElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key.map_or(0, |k| k.as_ptr() as u64),
        value: next.as_mut_ptr() as u64,
        ..MapElemAttr::default()
    };
    match sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

fn keys(fd: BorrowedFd<'_>, key_size: usize) -> io::Result<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut next = vec![0u8; key_size];
    while out.len() < MAX_ENTRIES {
        let prev = out.last().map(Vec::as_slice);
        if !next_key(fd, prev, &mut next)? {
            break;
        }
        out.push(next.clone());
    }
    Ok(out)
}

fn count_keys(fd: BorrowedFd<'_>, key_size: usize) -> io::Result<u64> {
    keys(fd, key_size).map(|k| k.len() as u64)
}

fn lookup(fd: BorrowedFd<'_>, key: &[u8], value_len: usize) -> io::Result<Option<Vec<u8>>> {
    let mut value = vec![0u8; value_len.max(1)];
    let mut attr = MapElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        ..MapElemAttr::default()
    };
    match sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => {
            value.truncate(value_len);
            Ok(Some(value))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

#[derive(Debug, Clone, Copy)]
struct CgroupLink {
    cgroup_id: u64,
    attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct IdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `bpf_link_info` up to the cgroup member of its union.
#[repr(C)]
#[derive(Default)]
struct LinkInfoRaw {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    cgroup_id: u64,
    attach_type: u32,
    _pad2: u32,
}

/// Cgroup links by program id: where each program is attached.
fn cgroup_links() -> io::Result<BTreeMap<u32, CgroupLink>> {
    let mut out = BTreeMap::new();
    let mut id = 0u32;
    for _ in 0..100_000 {
        let mut attr = IdAttr {
            id,
            ..IdAttr::default()
        };
        match sys_bpf(BPF_LINK_GET_NEXT_ID, &mut attr) {
            Ok(_) => id = attr.next_id,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
        let mut attr = IdAttr {
            id,
            ..IdAttr::default()
        };
        let Ok(raw) = sys_bpf(BPF_LINK_GET_FD_BY_ID, &mut attr) else {
            continue;
        };
        // SAFETY: the kernel just returned this new file descriptor to us.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        let mut info = LinkInfoRaw::default();
        let mut attr = InfoAttr {
            bpf_fd: fd.as_raw_fd() as u32,
            info_len: std::mem::size_of::<LinkInfoRaw>() as u32,
            info: (&mut info as *mut LinkInfoRaw) as u64,
        };
        if sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).is_ok() && info.link_type == BPF_LINK_TYPE_CGROUP {
            out.insert(
                info.prog_id,
                CgroupLink {
                    cgroup_id: info.cgroup_id,
                    attach_type: info.attach_type,
                },
            );
        }
    }
    Ok(out)
}

/// bpftool's names for the attach types the agent uses.
fn attach_type_name(t: u32) -> String {
    match t {
        3 => "sock_ops".into(),
        10 => "cgroup_inet4_connect".into(),
        11 => "cgroup_inet6_connect".into(),
        21 => "cgroup_getsockopt".into(),
        22 => "cgroup_setsockopt".into(),
        other => format!("attach type {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::KernelError;

    #[test]
    fn permission_is_told_by_errno_through_the_chain() {
        let syscall = |errno| aya::sys::SyscallError {
            call: "bpf_prog_get_next_id",
            io_error: std::io::Error::from_raw_os_error(errno),
        };
        let listing = |errno| KernelError::Programs(aya::programs::ProgramError::SyscallError(syscall(errno)));
        assert!(listing(libc::EPERM).is_permission_denied());
        assert!(listing(libc::EACCES).is_permission_denied());
        assert!(!listing(libc::ENOENT).is_permission_denied());
        let reading = KernelError::ReadMap {
            map: "SERVICES".into(),
            source: std::io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(reading.is_permission_denied());
        // The message names what failed; the kernel's answer is its source.
        assert_eq!(
            crate::error::Chain(&reading).to_string(),
            "reading the keys of map SERVICES: Operation not permitted (os error 1)"
        );
    }
}
