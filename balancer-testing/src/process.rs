//! Processes placed in a test's cgroup and network namespace.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, process::CommandExt as _},
    },
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use crate::{cgroup::Cgroup, netns::NetNs};

/// Makes `cmd` start inside `cgroup` and then `netns` (either optional).
/// The child joins the cgroup first and then enters the namespace with
/// `setns` — unlike `ip netns exec`, /sys is not remounted, so the cgroup
/// file system stays visible to it.
pub fn place(cmd: &mut Command, netns: Option<&NetNs>, cgroup: Option<&Cgroup>) -> io::Result<()> {
    place_at(cmd, netns.map(NetNs::path).as_deref(), cgroup.map(Cgroup::path))
}

/// [`place`] by paths: the namespace file (`/run/netns/<name>`) and the
/// cgroup directory.
pub fn place_at(cmd: &mut Command, netns: Option<&Path>, cgroup: Option<&Path>) -> io::Result<()> {
    let ns_fd: Option<OwnedFd> = netns.map(|ns| File::open(ns).map(OwnedFd::from)).transpose()?;
    let procs: Option<CString> = cgroup
        .map(|cg| CString::new(cg.join("cgroup.procs").as_os_str().as_bytes()))
        .transpose()
        .map_err(io::Error::other)?;
    // SAFETY: the closure only makes async-signal-safe system calls (open,
    // write, close, setns) on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &procs {
                join_cgroup(procs)?;
            }
            if let Some(ns) = &ns_fd {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}

/// The lines `out` (a child's stdout) prints, as they come, read by a
/// thread of their own.
pub fn lines(out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Makes the calling process (after fork, before exec) join the cgroup
/// whose `cgroup.procs` is `procs`. Async-signal-safe.
pub fn join_cgroup(procs: &CString) -> io::Result<()> {
    // SAFETY: plain system calls on a NUL-terminated path.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let rc = libc::write(fd, b"0".as_ptr().cast(), 1);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc != 1 {
            return Err(err);
        }
    }
    Ok(())
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    pub fn new(child: Child) -> Self {
        ChildGuard { child: Some(child) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until drop")
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait(),
            None => Ok(None),
        }
    }

    /// Sends `signal` to the process, by its PID.
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        let Some(child) = &self.child else {
            return Ok(());
        };
        let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
        // SAFETY: kill on the PID of a child this guard has not reaped yet.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGKILL and wait for the process to be gone.
    pub fn kill(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit on its own; kills it
    /// after that. Returns its exit status (None if killed).
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + timeout;
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                self.kill()?;
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
