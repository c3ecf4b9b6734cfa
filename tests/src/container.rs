//! A process started the way containerd or CRI-O start a non-privileged
//! container on a cgroup v2 node, and the node settings around it:
//!
//! - [`NsDelegate`]: the host's cgroup2 mount with `nsdelegate`, as systemd
//!   mounts it (set for the test, restored after).
//! - [`HostCgroupMount`]: the host's hierarchy mounted at a path of its own by
//!   `balancer-agent mount-cgroup2`, run like the DaemonSet's init step (from
//!   its own cgroup namespace).
//! - [`place_container`]: the process joins its container cgroup, gets a
//!   private cgroup namespace rooted there and a private mount namespace
//!   (slave to the host's) whose `/sys/fs/cgroup` shows only that namespace,
//!   read-only — or, for a node without cgroup v2, no cgroup2 mount at all.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::Command,
};

use crate::{cgroup::Cgroup, netns::NetNs, process::join_cgroup};

/// The cgroup2 mounts of this process: (mount point, super options).
fn cgroup2_mounts() -> io::Result<Vec<(PathBuf, String)>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut r = right.split_ascii_whitespace();
            (r.next()? == "cgroup2").then_some(())?;
            let supers = r.nth(1)?.to_owned();
            let point = left.split_ascii_whitespace().nth(4)?;
            Some((
                PathBuf::from(balancer_agent::cgroup::unescape_mount_path(point)),
                supers,
            ))
        })
        .collect())
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn remount(point: &Path, data: &str) -> io::Result<()> {
    nix::mount::mount(
        None::<&str>,
        point,
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT,
        Some(data),
    )
    .map_err(io::Error::from)
}

/// `nsdelegate` on the host's cgroup2 mount while it lives: with it the
/// kernel refuses to move a process out of its cgroup namespace.
pub struct NsDelegate {
    point: PathBuf,
    /// The cgroup2 options to put back (None: it was already on).
    restore: Option<String>,
}

impl NsDelegate {
    pub fn enable() -> io::Result<NsDelegate> {
        let (point, supers) = cgroup2_mounts()?
            .into_iter()
            .next()
            .ok_or_else(|| io::Error::other("no cgroup2 mount"))?;
        let options: Vec<&str> = supers.split(',').filter(|o| *o != "rw" && *o != "ro").collect();
        if options.contains(&"nsdelegate") {
            return Ok(NsDelegate { point, restore: None });
        }
        let mut with = options.clone();
        with.push("nsdelegate");
        remount(&point, &with.join(","))?;
        // `mount -o remount` would merge the old options back; the raw call
        // with exactly the old set clears nsdelegate again.
        Ok(NsDelegate {
            point,
            restore: Some(options.join(",")),
        })
    }

    /// Whether the mount shows nsdelegate now.
    pub fn active() -> bool {
        cgroup2_mounts().is_ok_and(|m| m.iter().any(|(_, s)| s.split(',').any(|o| o == "nsdelegate")))
    }
}

impl Drop for NsDelegate {
    fn drop(&mut self) {
        if let Some(options) = &self.restore {
            if let Err(e) = remount(&self.point, options) {
                eprintln!("cleanup: clearing nsdelegate on {}: {e}", self.point.display());
            }
        }
    }
}

/// The host's cgroup v2 hierarchy mounted at `dir` by the agent's init step
/// (`balancer-agent mount-cgroup2`), run from a cgroup namespace of its own
/// as an init container is. Unmounted on drop.
pub struct HostCgroupMount {
    dir: PathBuf,
}

impl HostCgroupMount {
    /// Runs `agent_bin mount-cgroup2 <dir>` in `init_cgroup` with a private
    /// cgroup namespace and a private mount namespace, as an init container.
    pub fn create(agent_bin: &Path, dir: PathBuf, init_cgroup: &Cgroup) -> io::Result<HostCgroupMount> {
        let mut cmd = Command::new(agent_bin);
        // This test process stands for the host's PID 1: its namespaces are
        // the host's.
        cmd.arg("mount-cgroup2").arg(&dir).args([
            "--host-proc",
            "/proc",
            "--host-pid",
            &std::process::id().to_string(),
        ]);
        let procs = cstr(&init_cgroup.path().join("cgroup.procs"))?;
        // SAFETY: only async-signal-safe system calls on data prepared
        // before the fork.
        unsafe {
            cmd.pre_exec(move || {
                join_cgroup(&procs)?;
                if libc::unshare(libc::CLONE_NEWCGROUP | libc::CLONE_NEWNS) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "mount-cgroup2 failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(HostCgroupMount { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `path` (in this process's view of the hierarchy) as the agent sees
    /// it through this mount.
    pub fn view_of(&self, path: &Path) -> PathBuf {
        let mount = balancer_agent::cgroup::cgroup2_mount().unwrap_or_default();
        self.dir.join(path.strip_prefix(&mount).unwrap_or(path))
    }
}

impl Drop for HostCgroupMount {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("cleanup: unmounting {}: {e}", self.dir.display());
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// What the container sees of cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupView {
    /// `/sys/fs/cgroup`: cgroup2, its own namespace, read-only (containerd
    /// and CRI-O on a cgroup v2 node).
    Namespaced,
    /// No cgroup2 mount at all (a node without cgroup v2).
    NoCgroup2,
}

/// Makes `cmd` start as a container: in `cgroup` with a cgroup namespace
/// rooted there, a private mount namespace with `view` of cgroups, then in
/// `netns`. Mounts made in the host's mount namespace before the start
/// (a [`HostCgroupMount`]) stay visible, as a hostPath volume would show them;
/// those under `read_only` turn read-only, as a `readOnly` volume mount.
pub fn place_container(
    cmd: &mut Command,
    netns: &NetNs,
    cgroup: &Cgroup,
    view: CgroupView,
    read_only: &[PathBuf],
) -> io::Result<()> {
    let ns_fd: OwnedFd = netns.open()?.into();
    let procs = cstr(&cgroup.path().join("cgroup.procs"))?;
    let root = cstr(Path::new("/"))?;
    let sys_fs_cgroup = cstr(Path::new("/sys/fs/cgroup"))?;
    let cgroup2 = CString::new("cgroup2").map_err(io::Error::other)?;
    let read_only: Vec<CString> = read_only.iter().map(|p| cstr(p)).collect::<io::Result<_>>()?;
    let hide: Vec<CString> = match view {
        CgroupView::Namespaced => Vec::new(),
        CgroupView::NoCgroup2 => cgroup2_mounts()?
            .into_iter()
            .map(|(p, _)| cstr(&p))
            .collect::<io::Result<_>>()?,
    };
    // SAFETY: only async-signal-safe system calls on data prepared before
    // the fork.
    unsafe {
        cmd.pre_exec(move || {
            join_cgroup(&procs)?;
            if libc::unshare(libc::CLONE_NEWCGROUP | libc::CLONE_NEWNS) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Slave: the host's later mounts still show, ours stay ours.
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            match view {
                CgroupView::Namespaced => {
                    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                    if libc::mount(
                        cgroup2.as_ptr(),
                        sys_fs_cgroup.as_ptr(),
                        cgroup2.as_ptr(),
                        flags,
                        std::ptr::null(),
                    ) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                CgroupView::NoCgroup2 => {
                    for p in &hide {
                        if libc::umount2(p.as_ptr(), libc::MNT_DETACH) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                }
            }
            for p in &read_only {
                let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
                if libc::mount(std::ptr::null(), p.as_ptr(), std::ptr::null(), flags, std::ptr::null()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::setns(ns_fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}
