//! cgroup v2 directories created for a test and removed on drop.

use std::{
    fs, io,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

/// A cgroup v2 directory this test created. Dropping it removes it and
/// every cgroup below it (bottom-up), waiting briefly for exiting processes
/// to leave. Kill the processes inside first (drop their guards before).
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// A new cgroup directly below the cgroup v2 mount point, with a unique
    /// name starting with `prefix`.
    pub fn new_top(prefix: &str) -> io::Result<Cgroup> {
        Cgroup::create(cgroup2_mount()?.join(crate::unique_name(prefix)))
    }

    /// A new cgroup at `path` (its parent must exist, it must not).
    pub fn create(path: PathBuf) -> io::Result<Cgroup> {
        fs::create_dir(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create the cgroup {}: {e}", path.display())))?;
        Ok(Cgroup { path })
    }

    /// A cgroup at a fixed `path` (a tool's own name, not a test's unique
    /// one): a leftover of an interrupted run is removed first.
    pub fn replace(path: PathBuf) -> io::Result<Cgroup> {
        remove_tree(&path, Duration::from_secs(5))?;
        Cgroup::create(path)
    }

    /// A new child cgroup `name`; it is removed on its own drop (and with
    /// this one's, if still there).
    pub fn child(&self, name: &str) -> io::Result<Cgroup> {
        Cgroup::create(self.path.join(name))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup id (the inode number of its directory on cgroup2, what
    /// `bpf_get_current_cgroup_id` returns).
    pub fn id(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        Ok(fs::metadata(&self.path)?.ino())
    }

    /// Moves process `pid` into this cgroup.
    pub fn add_pid(&self, pid: u32) -> io::Result<()> {
        fs::write(self.path.join("cgroup.procs"), pid.to_string())
    }

    /// The pids in this cgroup (not its children).
    pub fn pids(&self) -> io::Result<Vec<u32>> {
        Ok(fs::read_to_string(self.path.join("cgroup.procs"))?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }
}

/// The cgroup v2 mount point of this process's mount namespace (the first
/// one in `/proc/self/mounts`).
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let mut f = l.split_ascii_whitespace();
            let (_, path, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(path))
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no cgroup v2 hierarchy is mounted (see /proc/mounts); balancer needs cgroup v2",
            )
        })
}

/// Removes `dir` and every cgroup below it, retrying while exiting
/// processes still hold them (up to `wait`).
pub fn remove_tree(dir: &Path, wait: Duration) -> io::Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path(), wait)?;
            }
        }
    }
    let deadline = Instant::now() + wait;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(io::Error::other(format!("rmdir {}: {e}", dir.display()))),
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.path, Duration::from_secs(5)) {
            eprintln!("cleanup: {e}");
        }
    }
}
