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
        let mount = balancer_agent::cgroup::cgroup2_mount().map_err(io::Error::other)?;
        Cgroup::create(mount.join(crate::unique_name(prefix)))
    }

    fn create(path: PathBuf) -> io::Result<Cgroup> {
        fs::create_dir(&path)?;
        Ok(Cgroup { path })
    }

    /// A new child cgroup `name`; it is removed on its own drop (and with
    /// this one's, if still there).
    pub fn child(&self, name: &str) -> io::Result<Cgroup> {
        Cgroup::create(self.path.join(name))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup id (inode number of the directory).
    pub fn id(&self) -> io::Result<u64> {
        balancer_agent::cgroup::cgroup_id(&self.path).map_err(io::Error::other)
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
