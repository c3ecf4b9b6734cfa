//! What the DaemonSet runs besides the agent itself: the probes, which ask
//! this pod's own agent instance (two run on a node during a rolling
//! update), and the init step that mounts the host's cgroup v2 hierarchy.

use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{mount::MsFlags, sched::CloneFlags};

use crate::{
    api, cgroup,
    ctl::client::{admin_address, AdminClient},
    error::Chain,
};

/// What a probe asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Probe {
    /// Ready to serve (or settled: not ready for reasons only an operator
    /// can change, so a rollout need not wait for it).
    Ready,
    /// The process serves its admin API.
    Live,
}

/// Runs a probe: the line to print and whether it passed.
pub fn probe(
    what: Probe,
    admin: Option<SocketAddr>,
    run_dir: Option<&Path>,
    timeout: Duration,
) -> Result<String, String> {
    let addr = admin_address(admin, run_dir);
    let client = AdminClient::new(&addr).with_timeout(timeout);
    match what {
        Probe::Live => match client.get_raw("/healthz") {
            Ok((200, _)) => Ok(format!("alive ({addr})")),
            Ok((status, _)) => Err(format!("not alive: /healthz answered {status} ({addr})")),
            Err(e) => Err(format!("not alive: {}", Chain(&e))),
        },
        Probe::Ready => {
            let status: api::Status = client
                .get("/api/v1/status")
                .map_err(|e| format!("not ready: {}", Chain(&e)))?;
            judge(&status, &addr)
        }
    }
}

fn judge(status: &api::Status, addr: &str) -> Result<String, String> {
    let reasons = status.not_ready.join("; ");
    if status.ready {
        Ok(format!("ready ({addr})"))
    } else if status.settled {
        Ok(format!("settled, not ready: {reasons} ({addr})"))
    } else {
        Err(format!("not ready: {reasons} ({addr})"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("opening {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering the host's {what} namespace (needs CAP_SYS_ADMIN, CAP_SYS_CHROOT and CAP_SYS_PTRACE)")]
    Setns {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("creating {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting cgroup2 at {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
}

/// Mounts the host's cgroup v2 hierarchy at `dir` in the host's mount
/// namespace (that of `host_process`, a `/proc/<pid>` of a host process,
/// PID 1 in the DaemonSet), from the host's cgroup namespace (so the mount shows the
/// root, not this container's view), as the DaemonSet's init step. The
/// agent's container then sees it through a hostPath volume with
/// `HostToContainer` propagation. Must run single-threaded (entering a
/// mount namespace requires it).
pub fn mount_host_cgroup2(dir: &Path, host_process: &Path) -> Result<String, MountError> {
    let open = |name: &str| {
        let path = host_process.join("ns").join(name);
        File::open(&path).map_err(|source| MountError::Open { path, source })
    };
    let cgroup_ns = open("cgroup")?;
    let mnt_ns = open("mnt")?;
    nix::sched::setns(&cgroup_ns, CloneFlags::CLONE_NEWCGROUP)
        .map_err(|source| MountError::Setns { what: "cgroup", source })?;
    nix::sched::setns(&mnt_ns, CloneFlags::CLONE_NEWNS)
        .map_err(|source| MountError::Setns { what: "mount", source })?;
    std::fs::create_dir_all(dir).map_err(|source| MountError::Create {
        path: dir.to_owned(),
        source,
    })?;
    if cgroup::is_cgroup2_dir(dir)? && cgroup::is_hierarchy_root(dir) {
        return Ok(format!(
            "{} already shows the host's cgroup v2 hierarchy",
            dir.display()
        ));
    }
    nix::mount::mount(
        Some("cgroup2"),
        dir,
        Some("cgroup2"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|source| MountError::Mount {
        path: dir.to_owned(),
        source,
    })?;
    Ok(format!("mounted the host's cgroup v2 hierarchy at {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(ready: bool, settled: bool, reasons: &[&str]) -> api::Status {
        api::Status {
            ready,
            settled,
            not_ready: reasons.iter().map(|r| (*r).to_owned()).collect(),
            ..api::Status::default()
        }
    }

    #[test]
    fn the_ready_probe_passes_when_ready_or_settled() {
        assert!(judge(&status(true, true, &[]), "a").is_ok());
        let settled = judge(
            &status(false, true, &["this node cannot run balancer: no cgroup v2"]),
            "a",
        );
        assert!(
            settled.as_ref().is_ok_and(|l| l.contains("no cgroup v2")),
            "{settled:?}"
        );
        let starting = judge(&status(false, false, &["kubernetes state is not synced yet"]), "a");
        assert!(starting.is_err_and(|l| l.contains("not synced")));
    }

    #[test]
    fn the_probe_asks_the_instance_named_in_the_run_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(admin_address(None, Some(dir.path())), crate::admin::DEFAULT_ADDR);
        let addr: SocketAddr = "127.0.0.1:15002".parse().expect("addr");
        crate::app::bind::write_admin_address(dir.path(), addr).expect("write");
        assert_eq!(admin_address(None, Some(dir.path())), "127.0.0.1:15002");
        let explicit: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        assert_eq!(admin_address(Some(explicit), Some(dir.path())), "127.0.0.1:9");
    }
}
