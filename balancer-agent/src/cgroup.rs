//! cgroup v2: where the host's hierarchy is, the agent's own cgroup, and
//! cgroup ids.
//!
//! The agent never moves itself: it stays in the cgroup its container
//! runtime (or service manager) gave it, so that the kubelet's CPU and memory
//! limits keep applying. What it needs to know:
//!
//! - **The host's hierarchy**, where the programs attach and pods' cgroups
//!   are found. In a container the runtime's `/sys/fs/cgroup` shows only the
//!   container's cgroup namespace, so the DaemonSet mounts the host's
//!   hierarchy at a path of its own (`balancer-agent mount-cgroup2` in an init
//!   step, from the host's namespaces). Whatever the path, it must be the
//!   root of the hierarchy: the root is the one cgroup without `cgroup.type`.
//! - **Its own cgroup**: the root of its cgroup namespace plus its path
//!   inside it (`0::/path` in `/proc/self/cgroup`). A cgroup2 mount whose
//!   root (in `/proc/self/mountinfo`) is `/` shows the namespace root; the
//!   directory's inode is the cgroup id `bpf_get_current_cgroup_id()` sees.
//!   Its path in the host's hierarchy is found by that id.
//!
//! Mount points are read from `/proc/self/mountinfo`: `/sys/fs/cgroup` on
//! most systems, `/sys/fs/cgroup/unified` on hybrid ones.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// `CGROUP2_SUPER_MAGIC` from `statfs(2)`.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// How deep below the root a walk looks (kubelet layouts are 4–6 deep).
const MAX_WALK_DEPTH: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted (no cgroup2 entry in /proc/self/mountinfo); balancer needs cgroup v2")]
    NoCgroup2,
    #[error(
        "this process is in no cgroup v2 cgroup (no `0::` line in /proc/self/cgroup): the node runs cgroup v1 only"
    )]
    NotInCgroup2,
    #[error(
        "the host's cgroup v2 hierarchy is not visible: every cgroup2 mount here shows a cgroup namespace's view \
         (in a container, mount the host's hierarchy at a path of its own as deploy/daemonset.yaml does, and point \
         BALANCER_CGROUP_ROOT at it)"
    )]
    NoHostHierarchy,
    #[error(
        "{0} is not the root of a cgroup v2 hierarchy (it has cgroup.type: a cgroup below the root, or a cgroup \
         namespace's view); point BALANCER_CGROUP_ROOT at the host's hierarchy root"
    )]
    NotHierarchyRoot(PathBuf),
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not a directory of a cgroup v2 hierarchy")]
    NotCgroup2(PathBuf),
    #[error("the agent's own cgroup (id {id}) is not below {hierarchy}: that is not the hierarchy the agent runs in")]
    OwnNotFound { id: u64, hierarchy: PathBuf },
    #[error("the agent's own cgroup is not visible by path and no cgroup below {0} lists its process")]
    OwnNotListed(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A cgroup2 mount as `/proc/self/mountinfo` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub point: PathBuf,
    /// The cgroup at the mount's root, relative to this process's cgroup
    /// namespace root: `/` for the namespace root itself, `/../..` for a
    /// mount of an ancestor (the host's root seen from a container).
    pub root: String,
}

/// The cgroup2 mounts of this process's mount namespace.
pub fn cgroup2_mounts() -> Result<Vec<Mount>, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    Ok(cgroup2_mounts_in(&text))
}

/// The cgroup2 mounts in a `/proc/<pid>/mountinfo`-formatted text.
pub fn cgroup2_mounts_in(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // id parent major:minor root point options [optional...] - fstype source super
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_ascii_whitespace().next()?;
            if fstype != "cgroup2" {
                return None;
            }
            let mut fields = left.split_ascii_whitespace();
            let root = fields.nth(3)?;
            let point = fields.next()?;
            Some(Mount {
                point: PathBuf::from(unescape_mount_path(point)),
                root: unescape_mount_path(root),
            })
        })
        .collect()
}

/// The first cgroup v2 mount point of this process's mount namespace.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    cgroup2_mounts()?
        .into_iter()
        .next()
        .map(|m| m.point)
        .ok_or(CgroupError::NoCgroup2)
}

/// The first cgroup2 mount point in a `/proc/mounts`-formatted text.
pub fn cgroup2_mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_ascii_whitespace();
        let _source = fields.next()?;
        let target = fields.next()?;
        let fstype = fields.next()?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
    })
}

/// `/proc/mounts` and `mountinfo` escape space, tab, newline and backslash
/// as `\ooo`.
pub fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is a directory on a cgroup v2 file system.
pub fn is_cgroup2_dir(path: &Path) -> Result<bool, CgroupError> {
    let stat = nix::sys::statfs::statfs(path).map_err(|e| CgroupError::Io {
        path: path.to_owned(),
        source: io::Error::from(e),
    })?;
    let magic = stat.filesystem_type().0 as i64;
    Ok(magic == CGROUP2_SUPER_MAGIC)
}

/// Whether the cgroup v2 directory `dir` is the root of its hierarchy: the
/// only cgroup without a `cgroup.type` file. A cgroup namespace's root has
/// one, so a container's own view is never taken for the host's.
pub fn is_hierarchy_root(dir: &Path) -> bool {
    !dir.join("cgroup.type").exists()
}

/// The cgroup id of a cgroup v2 directory: the inode number of the directory,
/// which is what `bpf_get_current_cgroup_id()` returns for processes in it.
pub fn cgroup_id(path: &Path) -> Result<u64, CgroupError> {
    if !is_cgroup2_dir(path)? {
        return Err(CgroupError::NotCgroup2(path.to_owned()));
    }
    let meta = fs::metadata(path).map_err(io_err(path))?;
    Ok(meta.ino())
}

/// The host's cgroup v2 hierarchy: `explicit` if given (it must be the
/// root of a cgroup v2 hierarchy), else the first cgroup2 mount of this
/// mount namespace that shows the root.
pub fn host_hierarchy(explicit: Option<&Path>) -> Result<PathBuf, CgroupError> {
    if let Some(dir) = explicit {
        if !is_cgroup2_dir(dir)? {
            return Err(CgroupError::NotCgroup2(dir.to_owned()));
        }
        if !is_hierarchy_root(dir) {
            return Err(CgroupError::NotHierarchyRoot(dir.to_owned()));
        }
        return Ok(dir.to_owned());
    }
    let mounts = cgroup2_mounts()?;
    if mounts.is_empty() {
        return Err(CgroupError::NoCgroup2);
    }
    mounts
        .into_iter()
        .map(|m| m.point)
        .find(|p| is_cgroup2_dir(p).unwrap_or(false) && is_hierarchy_root(p))
        .ok_or(CgroupError::NoHostHierarchy)
}

/// This process's cgroup path relative to its cgroup namespace root
/// (`0::/path` in `/proc/self/cgroup`), without the leading `/`.
fn self_relative() -> Result<String, CgroupError> {
    let path = Path::new("/proc/self/cgroup");
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    self_relative_in(&text).ok_or(CgroupError::NotInCgroup2)
}

fn self_relative_in(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|rel| rel.trim_start_matches('/').to_owned())
}

/// The agent's own cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnCgroup {
    /// Its cgroup id.
    pub id: u64,
    /// Its directory in the host's hierarchy.
    pub path: PathBuf,
}

/// The calling process's cgroup, located in `hierarchy` (the host's).
pub fn own_cgroup(hierarchy: &Path) -> Result<OwnCgroup, CgroupError> {
    let rel = self_relative()?;
    let mounts = cgroup2_mounts()?;
    // A mount of our namespace's root shows our cgroup by path.
    let Some(view) = mounts.iter().find(|m| m.root == "/") else {
        // None (the container's /sys/fs/cgroup hidden): find our process.
        return find_by_pid(hierarchy, std::process::id());
    };
    let dir = view.point.join(&rel);
    let id = cgroup_id(&dir)?;
    if dir.starts_with(hierarchy) {
        return Ok(OwnCgroup { id, path: dir });
    }
    find_by_id(hierarchy, id).map(|path| OwnCgroup { id, path })
}

/// The directory below `root` (or `root` itself) whose cgroup id is `id`.
pub fn find_by_id(root: &Path, id: u64) -> Result<PathBuf, CgroupError> {
    let mut found = None;
    walk(root, 0, &mut |dir, meta| {
        if meta.ino() == id {
            found = Some(dir.to_owned());
            return true;
        }
        false
    });
    found.ok_or_else(|| CgroupError::OwnNotFound {
        id,
        hierarchy: root.to_owned(),
    })
}

fn find_by_pid(root: &Path, pid: u32) -> Result<OwnCgroup, CgroupError> {
    let pid = pid.to_string();
    let mut found = None;
    walk(root, 0, &mut |dir, meta| {
        let listed = fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|t| t.lines().any(|l| l.trim() == pid));
        if listed {
            found = Some(OwnCgroup {
                id: meta.ino(),
                path: dir.to_owned(),
            });
        }
        listed
    });
    found.ok_or_else(|| CgroupError::OwnNotListed(root.to_owned()))
}

/// Depth-first over `dir` and the cgroups below it until `visit` returns
/// true. Directories that vanish meanwhile are skipped.
fn walk(dir: &Path, depth: usize, visit: &mut dyn FnMut(&Path, &fs::Metadata) -> bool) -> bool {
    let Ok(meta) = fs::metadata(dir) else {
        return false;
    };
    if visit(dir, &meta) {
        return true;
    }
    if depth >= MAX_WALK_DEPTH {
        return false;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) && walk(&entry.path(), depth + 1, visit) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_unified_mount_in_hybrid_layout() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        assert_eq!(cgroup2_mount_in(mounts), Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn finds_plain_mount_and_unescapes() {
        let mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount_in(mounts), Some(PathBuf::from("/sys/fs/cgroup")));
        let mounts = "none /mnt/my\\040cgroups cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount_in(mounts), Some(PathBuf::from("/mnt/my cgroups")));
    }

    #[test]
    fn no_cgroup2_is_none() {
        let mounts = "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\nproc /proc proc rw 0 0\n";
        assert_eq!(cgroup2_mount_in(mounts), None);
        assert_eq!(cgroup2_mount_in(""), None);
    }

    /// A container on a systemd node: the runtime's own /sys/fs/cgroup (the
    /// namespace root, read-only) and the host's hierarchy mounted by the
    /// DaemonSet's init step (seen from inside as three levels up).
    const CONTAINER_MOUNTINFO: &str = "\
1273 1200 0:350 / / rw,relatime master:500 - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
1290 1273 0:27 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate,memory_recursiveprot
1301 1273 0:27 /../../.. /run/balancer/cgroupv2 rw,relatime master:9 - cgroup2 none rw,nsdelegate
1302 1273 0:5 / /proc rw,nosuid - proc proc rw
1303 1273 0:44 / /run/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn mountinfo_gives_every_cgroup2_mount_with_its_root() {
        assert_eq!(
            cgroup2_mounts_in(CONTAINER_MOUNTINFO),
            vec![
                Mount {
                    point: "/sys/fs/cgroup".into(),
                    root: "/".into()
                },
                Mount {
                    point: "/run/balancer/cgroupv2".into(),
                    root: "/../../..".into()
                },
            ]
        );
    }

    #[test]
    fn mountinfo_optional_fields_and_garbage_are_handled() {
        let text = "36 35 98:0 / /a rw shared:1 master:2 - cgroup2 none rw\nnot a mountinfo line\n\n";
        assert_eq!(
            cgroup2_mounts_in(text),
            vec![Mount {
                point: "/a".into(),
                root: "/".into()
            }]
        );
    }

    #[test]
    fn own_relative_path_comes_from_the_unified_line() {
        assert_eq!(
            self_relative_in("12:memory:/x\n0::/kubepods.slice/a.scope\n").as_deref(),
            Some("kubepods.slice/a.scope")
        );
        assert_eq!(self_relative_in("0::/\n").as_deref(), Some(""));
        assert_eq!(self_relative_in("4:memory:/x\n"), None);
    }

    #[test]
    fn this_process_cgroup_is_found_in_the_hierarchy() {
        let Ok(root) = host_hierarchy(None) else {
            eprintln!("no cgroup v2 hierarchy visible on this machine; skipping");
            return;
        };
        assert!(is_hierarchy_root(&root));
        let own = own_cgroup(&root).expect("own cgroup");
        assert!(own.path.starts_with(&root));
        assert_eq!(cgroup_id(&own.path).expect("cgroup id"), own.id);
        assert_eq!(find_by_id(&root, own.id).expect("found by id"), own.path);
        // Walking for our pid finds the same cgroup.
        assert_eq!(find_by_pid(&root, std::process::id()).expect("by pid"), own);
    }

    #[test]
    fn a_cgroup_below_the_root_is_not_taken_for_the_hierarchy() {
        let Ok(root) = host_hierarchy(None) else {
            eprintln!("no cgroup v2 hierarchy visible on this machine; skipping");
            return;
        };
        // Any child cgroup has cgroup.type; a plain directory is no cgroup.
        let child = fs::read_dir(&root)
            .expect("readdir")
            .flatten()
            .find(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path());
        if let Some(child) = child {
            assert!(matches!(
                host_hierarchy(Some(&child)),
                Err(CgroupError::NotHierarchyRoot(_))
            ));
        }
        let tmp = std::env::temp_dir();
        assert!(matches!(host_hierarchy(Some(&tmp)), Err(CgroupError::NotCgroup2(_))));
    }
}
