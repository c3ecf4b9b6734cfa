//! cgroup v2: where it is mounted, cgroup ids, and moving the agent into its
//! own cgroup.
//!
//! The kernel programs attach to a cgroup v2 directory (by default the root
//! of the hierarchy). The mount point is read from `/proc/mounts`: it is
//! `/sys/fs/cgroup` on most systems and `/sys/fs/cgroup/unified` on hybrid
//! ones.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// `CGROUP2_SUPER_MAGIC` from `statfs(2)`.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Name of the agent's own cgroup, created below the attach point.
pub const AGENT_CGROUP_NAME: &str = "balancer-agent";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted (no cgroup2 entry in /proc/mounts); balancer needs cgroup v2")]
    NoCgroup2,
    #[error("reading /proc/mounts: {0}")]
    Mounts(#[source] io::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not a directory of a cgroup v2 hierarchy")]
    NotCgroup2(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The first cgroup v2 mount point listed in `/proc/mounts`.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = fs::read_to_string("/proc/mounts").map_err(CgroupError::Mounts)?;
    cgroup2_mount_in(&mounts).ok_or(CgroupError::NoCgroup2)
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

/// `/proc/mounts` escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> String {
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

/// The cgroup id of a cgroup v2 directory: the inode number of the directory,
/// which is what `bpf_get_current_cgroup_id()` returns for processes in it.
pub fn cgroup_id(path: &Path) -> Result<u64, CgroupError> {
    if !is_cgroup2_dir(path)? {
        return Err(CgroupError::NotCgroup2(path.to_owned()));
    }
    let meta = fs::metadata(path).map_err(io_err(path))?;
    Ok(meta.ino())
}

/// The cgroup v2 directory of the calling process (`0::/path` in
/// `/proc/self/cgroup`), under `mount`.
pub fn current_cgroup(mount: &Path) -> Result<PathBuf, CgroupError> {
    let path = Path::new("/proc/self/cgroup");
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .trim_start_matches('/');
    Ok(mount.join(rel))
}

/// Creates `dir` if needed (a cgroup: `mkdir` in a cgroup v2 directory) and
/// moves the whole calling process (every thread) into it.
pub fn move_self_into(dir: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(dir)(e)),
    }
    let procs = dir.join("cgroup.procs");
    fs::write(&procs, std::process::id().to_string()).map_err(io_err(&procs))
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

    #[test]
    fn this_process_cgroup_is_under_the_mount() {
        let Ok(mount) = cgroup2_mount() else {
            eprintln!("no cgroup v2 on this machine; skipping");
            return;
        };
        let dir = current_cgroup(&mount).expect("reading /proc/self/cgroup");
        assert!(dir.starts_with(&mount));
        assert!(cgroup_id(&dir).expect("cgroup id") > 0);
    }
}
