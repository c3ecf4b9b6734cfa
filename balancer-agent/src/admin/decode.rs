//! Decoding of the kernel maps' keys and values (the `balancer-common`
//! types) into what an operator reads: VIPs as `ip:port`, cgroup ids with
//! their directory, socket cookies, 4-tuples.

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
};

use balancer_common::{path, Config, Connection, Ipv4Endpoint, Program, ProgramCounters, SockKey};

use crate::cgroup;

/// Reads a plain-integer `#[repr(C)]` value from exactly its bytes.
fn pod<T: Copy>(b: &[u8]) -> Option<T> {
    if b.len() != std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length matches, the read is unaligned, and every T used
    // here is a #[repr(C)] struct of integers (any bit pattern is valid).
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

pub fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 3);
    for (i, x) in b.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{x:02x}");
    }
    s
}

pub fn endpoint(e: &Ipv4Endpoint) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(e.octets()), e.host_port())
}

fn sock_key(k: &SockKey) -> String {
    format!("netns {} {} -> {}", k.netns, endpoint(&k.local), endpoint(&k.remote))
}

fn path_name(p: u32) -> &'static str {
    match p {
        path::UNDECIDED => "undecided",
        path::REDIRECT => "redirect",
        path::TCP => "tcp",
        _ => "?",
    }
}

/// Cgroup ids (directory inode numbers) to their paths under the host's
/// cgroup v2 hierarchy (else this mount namespace's first cgroup2 mount),
/// found once per dump.
#[derive(Debug, Default)]
pub struct CgroupNames {
    by_id: Option<HashMap<u64, PathBuf>>,
}

impl CgroupNames {
    pub fn name(&mut self, id: u64) -> Option<&Path> {
        let map = self.by_id.get_or_insert_with(|| {
            let mut map = HashMap::new();
            let root = cgroup::host_hierarchy(None).or_else(|_| cgroup::cgroup2_mount());
            if let Ok(root) = root {
                walk(&root, 0, &mut map);
            }
            map
        });
        map.get(&id).map(PathBuf::as_path)
    }
}

fn walk(dir: &Path, depth: usize, map: &mut HashMap<u64, PathBuf>) {
    // Bounded: a node has thousands of cgroups at most, a few levels deep.
    if depth > 16 || map.len() > 100_000 {
        return;
    }
    if let Ok(id) = cgroup::cgroup_id(dir) {
        map.insert(id, dir.to_path_buf());
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&e.path(), depth + 1, map);
        }
    }
}

/// Decodes one entry of the map `map` (its name as the loader created it).
/// Unknown maps and sizes fall back to hex.
pub fn entry(map: &str, key: &[u8], value: &[u8], cgroups: &mut CgroupNames) -> (String, String) {
    let decoded = match map {
        "SERVICES" => pod::<Ipv4Endpoint>(key).map(|k| {
            let v = pod::<u32>(value).map_or_else(|| hex(value), |v| format!("flags {v:#x}"));
            (endpoint(&k).to_string(), v)
        }),
        "ENROLLED" => pod::<u64>(key).map(|id| {
            let k = match cgroups.name(id) {
                Some(p) => format!("cgroup {id} ({})", p.display()),
                None => format!("cgroup {id}"),
            };
            let v = pod::<u32>(value).map_or_else(|| hex(value), |v| format!("flags {v:#x}"));
            (k, v)
        }),
        "ORIG_BY_COOKIE" => pod::<u64>(key)
            .zip(pod::<Ipv4Endpoint>(value))
            .map(|(c, v)| (format!("cookie {c}"), format!("original {}", endpoint(&v)))),
        "CONNECTIONS" => pod::<SockKey>(key).zip(pod::<Connection>(value)).map(|(k, c)| {
            (
                sock_key(&k),
                format!(
                    "original {} pod netns {} cookie {} pod path {} agent path {}{}{}",
                    endpoint(&c.original),
                    c.pod_netns,
                    c.pod_cookie,
                    path_name(c.pod_path),
                    path_name(c.agent_path),
                    if c.flags & balancer_common::CONN_UPSTREAM != 0 {
                        " upstream"
                    } else {
                        ""
                    },
                    if c.flags & balancer_common::CONN_LEFT_FAST_PATH != 0 {
                        " left-fast-path"
                    } else {
                        ""
                    },
                ),
            )
        }),
        "SOCKETS" => pod::<SockKey>(key).map(|k| {
            let v = match pod::<u64>(value) {
                Some(cookie) => format!("socket cookie {cookie}"),
                None => "socket".to_owned(),
            };
            (sock_key(&k), v)
        }),
        "CONFIG" => pod::<u32>(key).zip(pod::<Config>(value)).map(|(i, c)| {
            (
                i.to_string(),
                format!(
                    "listener {} agent netns {} agent cgroup {} enabled {} fast path {}",
                    endpoint(&c.listener),
                    c.agent_netns,
                    c.agent_cgroup,
                    c.enabled,
                    c.fast_path
                ),
            )
        }),
        "COUNTERS" => pod::<u32>(key).map(|i| {
            let name = Program::ALL.get(i as usize).map_or("?", |p| p.name());
            let c = per_cpu_counters(value);
            (
                format!("{i} ({name})"),
                format!(
                    "redirected {} passed {} errors {} bytes {} pinned {}",
                    c.redirected, c.passed, c.errors, c.bytes, c.pinned
                ),
            )
        }),
        _ => None,
    };
    decoded.unwrap_or_else(|| (hex(key), hex(value)))
}

/// Sums per-CPU `ProgramCounters` (each CPU's slot padded to 8 bytes, as
/// the kernel hands per-CPU values to user space).
pub fn per_cpu_counters(value: &[u8]) -> ProgramCounters {
    let size = std::mem::size_of::<ProgramCounters>();
    let stride = size.div_ceil(8) * 8;
    let mut sum = ProgramCounters::default();
    for chunk in value.chunks(stride) {
        if let Some(c) = chunk.get(..size).and_then(pod::<ProgramCounters>) {
            sum.add(&c);
        }
    }
    sum
}

/// `ProgramCounters` by field name.
pub fn counters_map(c: &ProgramCounters) -> std::collections::BTreeMap<String, u64> {
    [
        ("redirected", c.redirected),
        ("passed", c.passed),
        ("errors", c.errors),
        ("bytes", c.bytes),
        ("pinned", c.pinned),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a plain-integer repr(C) value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }.to_vec()
    }

    #[test]
    fn cgroup_ids_are_named_by_their_directory_in_the_host_hierarchy() {
        let Ok(root) = cgroup::host_hierarchy(None) else {
            eprintln!("SKIPPED: no cgroup v2 hierarchy root visible here");
            return;
        };
        let mut names = CgroupNames::default();
        let id = cgroup::cgroup_id(&root).expect("the hierarchy root is a cgroup");
        assert_eq!(names.name(id), Some(root.as_path()));
        // An id no cgroup has stays unnamed.
        assert_eq!(names.name(u64::MAX), None);
    }

    #[test]
    fn vips_and_tuples_decode_to_addresses() {
        let mut cg = CgroupNames::default();
        let vip = Ipv4Endpoint::from_octets([10, 96, 0, 10], 8000);
        let (k, v) = entry("SERVICES", &bytes(&vip), &bytes(&0u32), &mut cg);
        assert_eq!((k.as_str(), v.as_str()), ("10.96.0.10:8000", "flags 0x0"));

        let key = SockKey {
            netns: 4,
            local: Ipv4Endpoint::from_octets([10, 0, 0, 1], 15001),
            remote: Ipv4Endpoint::from_octets([10, 0, 0, 2], 40000),
        };
        let conn = Connection {
            original: vip,
            pod_netns: 9,
            pod_cookie: 77,
            pod_path: path::REDIRECT,
            ..Connection::default()
        };
        let (k, v) = entry("CONNECTIONS", &bytes(&key), &bytes(&conn), &mut cg);
        assert_eq!(k, "netns 4 10.0.0.1:15001 -> 10.0.0.2:40000");
        assert!(
            v.starts_with("original 10.96.0.10:8000 pod netns 9 cookie 77 pod path redirect"),
            "{v}"
        );

        let (k, v) = entry("ORIG_BY_COOKIE", &bytes(&123u64), &bytes(&vip), &mut cg);
        assert_eq!((k.as_str(), v.as_str()), ("cookie 123", "original 10.96.0.10:8000"));
    }

    #[test]
    fn per_cpu_counters_are_summed_and_unknown_maps_are_hex() {
        let one = ProgramCounters {
            redirected: 2,
            passed: 1,
            ..ProgramCounters::default()
        };
        let mut value = bytes(&one);
        value.extend(bytes(&one));
        let (k, v) = entry("COUNTERS", &bytes(&0u32), &value, &mut CgroupNames::default());
        assert_eq!(k, "0 (connect4)");
        assert_eq!(v, "redirected 4 passed 2 errors 0 bytes 0 pinned 0");
        let (k, v) = entry("OTHER", &[1, 2], &[0xff], &mut CgroupNames::default());
        assert_eq!((k.as_str(), v.as_str()), ("01 02", "ff"));
        // A key of the wrong size is shown raw rather than misread.
        let (k, _) = entry("SERVICES", &[1, 2, 3], &[0; 4], &mut CgroupNames::default());
        assert_eq!(k, "01 02 03");
    }
}
