//! A pod's network namespace, found from its cgroup, and code run inside it.
//!
//! From a pod's cgroup directory (in the host's cgroup v2 hierarchy) to the
//! pod's network namespace: a process of the cgroup's subtree, then
//! `<procfs>/<pid>/ns/net`. Two ways to find that process:
//!
//! 1. `cgroup.procs` of every cgroup in the subtree, each pid checked against
//!    `<procfs>/<pid>/cgroup` (so a pid read in one PID namespace is never
//!    taken for another namespace's process of the same number).
//! 2. When `cgroup.procs` shows no usable pid — it lists processes of other
//!    PID namespaces as `0`, which is what an agent without `hostPID` sees —
//!    one scan of `<procfs>/*/cgroup` per sweep, shared by every pod that
//!    needs it.
//!
//! `<procfs>/<pid>/cgroup` shows the path relative to the *reader's* cgroup
//! namespace (containerd gives unprivileged containers their own), e.g.
//! `/../../kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`
//! while the pod's directory is
//! `/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice`.
//! A process belongs to the pod when the shown path, its leading `..`
//! removed, starts with a tail of the pod directory's path that includes the
//! pod directory's own name ([`in_subtree`]). The kubelet's pod directories
//! carry the pod UID, so that name is unique on the node. Even a wrong match
//! could not close anything: the sweep only counts sockets whose cgroup id
//! lies in the pod's subtree.
//!
//! Opened namespace files are cached per pod ([`NetnsCache`]) and shared by
//! pods in the same namespace (by inode), and checked each sweep with one
//! `stat` of the remembered process's `ns/net`.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    fs::{self, File},
    hash::Hash,
    io,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
    sync::{Arc, Weak},
};

use nix::sched::CloneFlags;

/// Errors of finding and entering a pod's network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cgroup {0} does not exist")]
    CgroupGone(PathBuf),
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening network namespace {path} (another process's namespace needs CAP_SYS_PTRACE)")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cgroup {cgroup} has processes but none of them is visible under {procfs}: \
         the agent needs the host's /proc there (or hostPID)"
    )]
    NotVisible { cgroup: PathBuf, procfs: PathBuf },
    #[error("entering a network namespace (setns needs CAP_SYS_ADMIN)")]
    Enter(#[source] io::Error),
    #[error("starting the network namespace thread")]
    Spawn(#[source] io::Error),
    #[error("the network namespace thread panicked")]
    Panicked,
}

/// Runs `f` on a new thread that first enters the network namespace
/// `netns` (an open `ns/net` file), and returns its result. The calling
/// thread — a tokio worker or blocking-pool thread — never changes
/// namespace; the entered thread ends with `f`.
pub fn run_in<R: Send>(netns: &File, f: impl FnOnce() -> R + Send) -> Result<R, NetnsError> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("pinned-netns".into())
            .spawn_scoped(scope, move || {
                nix::sched::setns(netns, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Enter(e.into()))?;
                Ok(f())
            })
            .map_err(NetnsError::Spawn)?;
        handle.join().map_err(|_| NetnsError::Panicked)?
    })
}

/// An open network namespace file.
#[derive(Debug)]
pub struct Netns {
    file: File,
    inode: u64,
}

impl Netns {
    /// Opens a namespace file (`<procfs>/<pid>/ns/net`, `/run/netns/<name>`).
    pub fn open(path: &Path) -> Result<Netns, NetnsError> {
        let open_err = |source| NetnsError::Open {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let inode = file.metadata().map_err(open_err)?.ino();
        Ok(Netns { file, inode })
    }

    /// The open `ns/net` file (for `setns`).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The namespace's inode number (what `ip netns identify` compares).
    pub fn inode(&self) -> u64 {
        self.inode
    }
}

/// What a pod's cgroup subtree holds now.
#[derive(Debug, Default, Clone)]
pub struct CgroupTree {
    /// The cgroup ids (directory inodes) of the pod's cgroup and every
    /// cgroup below it.
    pub ids: HashSet<u64>,
    /// Processes listed in the subtree's `cgroup.procs` files, as the
    /// reader's PID namespace numbers them.
    pub pids: Vec<u32>,
    /// Processes listed as `0`: members the reader's PID namespace cannot
    /// see.
    pub hidden: usize,
}

impl CgroupTree {
    /// Whether any process is in the subtree.
    pub fn populated(&self) -> bool {
        !self.pids.is_empty() || self.hidden > 0
    }
}

/// Reads the pod's cgroup subtree. A `dir` that does not exist is
/// [`NetnsError::CgroupGone`]; cgroups below it that vanish while being read
/// are skipped.
pub fn read_tree(dir: &Path) -> Result<CgroupTree, NetnsError> {
    let gone_or = |path: &Path, source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound && !dir.exists() {
            NetnsError::CgroupGone(dir.to_owned())
        } else {
            NetnsError::Read {
                path: path.to_owned(),
                source,
            }
        }
    };
    let mut tree = CgroupTree::default();
    let mut stack = vec![dir.to_owned()];
    while let Some(cg) = stack.pop() {
        let top = cg == dir;
        let step = (|| -> io::Result<()> {
            tree.ids.insert(fs::metadata(&cg)?.ino());
            for line in fs::read_to_string(cg.join("cgroup.procs"))?.lines() {
                match line.trim().parse::<u32>() {
                    Ok(0) => tree.hidden += 1,
                    Ok(pid) => tree.pids.push(pid),
                    Err(_) => {}
                }
            }
            for entry in fs::read_dir(&cg)? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    stack.push(entry.path());
                }
            }
            Ok(())
        })();
        match step {
            Ok(()) => {}
            Err(e) if !top && e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(gone_or(&cg, e)),
        }
    }
    Ok(tree)
}

/// The cgroup v2 path of process `pid` as `<procfs>/<pid>/cgroup` shows it
/// to this process (the `0::` line); `None` when the process is gone.
pub fn shown_cgroup(procfs: &Path, pid: u32) -> Option<String> {
    let text = fs::read_to_string(procfs.join(pid.to_string()).join("cgroup")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_owned)
}

/// Whether a cgroup path shown by `/proc/<pid>/cgroup` lies in the subtree
/// of the cgroup directory `pod_dir` (see the module docs): the shown path
/// without its leading `..` starts with some tail of `pod_dir` that includes
/// `pod_dir`'s own name.
pub fn in_subtree(pod_dir: &Path, shown: &str) -> bool {
    let shown: Vec<&str> = shown
        .split('/')
        .filter(|c| !c.is_empty())
        .skip_while(|c| *c == "..")
        .collect();
    let pod: Vec<Cow<'_, str>> = pod_dir
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy()),
            _ => None,
        })
        .collect();
    (1..=pod.len().min(shown.len())).any(|k| shown[..k].iter().eq(pod[pod.len() - k..].iter()))
}

/// `<procfs>/*/cgroup` read once, on first use, for the pods whose
/// `cgroup.procs` showed no usable pid.
#[derive(Debug)]
pub struct ProcScan {
    procfs: PathBuf,
    entries: Option<Vec<(u32, String)>>,
}

impl ProcScan {
    pub fn new(procfs: &Path) -> ProcScan {
        ProcScan {
            procfs: procfs.to_owned(),
            entries: None,
        }
    }

    /// Processes whose cgroup lies in `pod_dir`'s subtree.
    pub fn matching(&mut self, pod_dir: &Path) -> Vec<u32> {
        let procfs = &self.procfs;
        let entries = self.entries.get_or_insert_with(|| {
            let Ok(dir) = fs::read_dir(procfs) else {
                return Vec::new();
            };
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|pid| Some((pid, shown_cgroup(procfs, pid)?)))
                .collect()
        });
        entries
            .iter()
            .filter(|(_, shown)| in_subtree(pod_dir, shown))
            .map(|(pid, _)| *pid)
            .collect()
    }
}

#[derive(Debug)]
struct Entry {
    cgroup: PathBuf,
    pid: u32,
    netns: Arc<Netns>,
}

/// Each pod's open network namespace, kept while the pod is passed to
/// [`NetnsCache::resolve`] (drop the others with [`NetnsCache::retain`]).
#[derive(Debug)]
pub struct NetnsCache<K> {
    procfs: PathBuf,
    pods: HashMap<K, Entry>,
    by_inode: HashMap<u64, Weak<Netns>>,
}

impl<K: Eq + Hash + Clone> NetnsCache<K> {
    /// A cache reading processes under `procfs` (`/proc`, or the host's
    /// `/proc` mounted elsewhere).
    pub fn new(procfs: &Path) -> Self {
        NetnsCache {
            procfs: procfs.to_owned(),
            pods: HashMap::new(),
            by_inode: HashMap::new(),
        }
    }

    /// The pod's cgroup subtree and, when it has a process, its network
    /// namespace.
    pub fn resolve(
        &mut self,
        key: &K,
        cgroup: &Path,
        scan: &mut ProcScan,
    ) -> Result<(CgroupTree, Option<Arc<Netns>>), NetnsError> {
        let tree = match read_tree(cgroup) {
            Ok(tree) if tree.populated() => tree,
            other => {
                self.pods.remove(key);
                return other.map(|tree| (tree, None));
            }
        };
        if let Some(entry) = self.pods.get(key) {
            let ns_path = self.procfs.join(entry.pid.to_string()).join("ns/net");
            if entry.cgroup == cgroup && fs::metadata(&ns_path).is_ok_and(|m| m.ino() == entry.netns.inode) {
                return Ok((tree, Some(Arc::clone(&entry.netns))));
            }
            self.pods.remove(key);
        }
        let mut last_err = None;
        let mut found = self.first_open(&tree.pids, cgroup, &mut last_err);
        if found.is_none() {
            found = self.first_open(&scan.matching(cgroup), cgroup, &mut last_err);
        }
        let Some((pid, netns)) = found else {
            return Err(last_err.unwrap_or_else(|| NetnsError::NotVisible {
                cgroup: cgroup.to_owned(),
                procfs: self.procfs.clone(),
            }));
        };
        let entry = Entry {
            cgroup: cgroup.to_owned(),
            pid,
            netns: Arc::clone(&netns),
        };
        self.pods.insert(key.clone(), entry);
        Ok((tree, Some(netns)))
    }

    /// The first of `pids` whose namespace opens; the last failure in
    /// `last_err`.
    fn first_open(
        &mut self,
        pids: &[u32],
        cgroup: &Path,
        last_err: &mut Option<NetnsError>,
    ) -> Option<(u32, Arc<Netns>)> {
        for &pid in pids {
            match self.open_for(pid, cgroup) {
                Ok(Some(netns)) => return Some((pid, netns)),
                Ok(None) => {}
                Err(e) => *last_err = Some(e),
            }
        }
        None
    }

    /// `pid`'s network namespace if `pid` is in `cgroup`'s subtree before and
    /// after opening it (a pid that exits and is reused in between is not
    /// taken).
    fn open_for(&mut self, pid: u32, cgroup: &Path) -> Result<Option<Arc<Netns>>, NetnsError> {
        let belongs = || shown_cgroup(&self.procfs, pid).is_some_and(|shown| in_subtree(cgroup, &shown));
        if !belongs() {
            return Ok(None);
        }
        let netns = Netns::open(&self.procfs.join(pid.to_string()).join("ns/net"))?;
        if !belongs() {
            return Ok(None);
        }
        if let Some(shared) = self.by_inode.get(&netns.inode).and_then(Weak::upgrade) {
            return Ok(Some(shared));
        }
        let netns = Arc::new(netns);
        self.by_inode.insert(netns.inode, Arc::downgrade(&netns));
        Ok(Some(netns))
    }

    /// Keeps the pods for which `live` is true, closing the others'
    /// namespace files (unless another pod shares them).
    pub fn retain(&mut self, mut live: impl FnMut(&K) -> bool) {
        self.pods.retain(|k, _| live(k));
        self.by_inode.retain(|_, w| w.strong_count() > 0);
    }

    /// Pods with a cached namespace.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether no pod has a cached namespace.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// Distinct namespace files held open.
    pub fn open_namespaces(&self) -> usize {
        self.by_inode.values().filter(|w| w.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b_2c3d.slice";

    #[test]
    fn shown_paths_in_the_host_cgroup_namespace() {
        let pod = Path::new(POD);
        let container =
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b_2c3d.slice/cri-containerd-1.scope";
        assert!(in_subtree(pod, container));
        assert!(in_subtree(
            pod,
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b_2c3d.slice"
        ));
        // A sibling pod, the parent, the root.
        assert!(!in_subtree(
            pod,
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podffff.slice/cri-containerd-1.scope"
        ));
        assert!(!in_subtree(pod, "/kubepods.slice/kubepods-besteffort.slice"));
        assert!(!in_subtree(pod, "/"));
        assert!(!in_subtree(pod, ""));
    }

    #[test]
    fn shown_paths_relative_to_the_agents_own_cgroup_namespace() {
        let pod = Path::new(POD);
        // Agent in another QoS tier: the paths meet at kubepods.slice.
        assert!(in_subtree(
            pod,
            "/../../../kubepods-besteffort.slice/kubepods-besteffort-pod0a1b_2c3d.slice/cri-containerd-1.scope"
        ));
        // Agent in the same tier: they meet at the tier.
        assert!(in_subtree(
            pod,
            "/../../kubepods-besteffort-pod0a1b_2c3d.slice/cri-containerd-1.scope"
        ));
        assert!(!in_subtree(pod, "/../../kubepods-besteffort-podffff.slice/x.scope"));
        // The agent's own cgroup (its namespace root).
        assert!(!in_subtree(pod, "/"));
    }

    #[test]
    fn cgroupfs_driver_paths() {
        let pod = Path::new("/sys/fs/cgroup/kubepods/burstable/pod0a1b-2c3d");
        assert!(in_subtree(pod, "/kubepods/burstable/pod0a1b-2c3d/abcdef"));
        assert!(in_subtree(pod, "/../pod0a1b-2c3d/abcdef"));
        assert!(!in_subtree(pod, "/kubepods/burstable/abcdef"));
        // A tail of the pod path without the pod's own name is not enough.
        assert!(!in_subtree(pod, "/burstable/other"));
    }

    #[test]
    fn a_missing_cgroup_is_gone_and_an_empty_one_unpopulated() {
        let t = tempfile::tempdir().expect("tempdir");
        let missing = t.path().join("nope");
        assert!(matches!(read_tree(&missing), Err(NetnsError::CgroupGone(p)) if p == missing));
        // A directory tree shaped like a cgroup (the files a cgroup has).
        let pod = t.path().join("pod");
        fs::create_dir_all(pod.join("c1")).expect("mkdir");
        fs::write(pod.join("cgroup.procs"), "").expect("write");
        fs::write(pod.join("c1/cgroup.procs"), "").expect("write");
        let tree = read_tree(&pod).expect("tree");
        assert!(!tree.populated());
        assert_eq!(tree.ids.len(), 2);
        fs::write(pod.join("c1/cgroup.procs"), "0\n0\n").expect("write");
        fs::write(pod.join("cgroup.procs"), "12\n").expect("write");
        let tree = read_tree(&pod).expect("tree");
        assert_eq!((tree.pids.clone(), tree.hidden), (vec![12], 2));
        assert!(tree.populated());
        // Not a cgroup: an error, not "gone".
        let plain = t.path().join("plain");
        fs::create_dir(&plain).expect("mkdir");
        assert!(matches!(read_tree(&plain), Err(NetnsError::Read { .. })));
    }

    #[test]
    fn scan_finds_processes_of_a_fake_procfs() {
        let t = tempfile::tempdir().expect("tempdir");
        let procfs = t.path();
        for (pid, cg) in [
            (1, "0::/init.scope\n"),
            (
                20,
                "1:cpu:/x\n0::/../../kubepods-besteffort-pod0a1b_2c3d.slice/cri-containerd-1.scope\n",
            ),
            (
                21,
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podffff.slice/c.scope\n",
            ),
        ] {
            fs::create_dir(procfs.join(pid.to_string())).expect("mkdir");
            fs::write(procfs.join(pid.to_string()).join("cgroup"), cg).expect("write");
        }
        fs::create_dir(procfs.join("self")).expect("mkdir");
        let mut scan = ProcScan::new(procfs);
        assert_eq!(scan.matching(Path::new(POD)), vec![20]);
        assert_eq!(shown_cgroup(procfs, 1).as_deref(), Some("/init.scope"));
        assert_eq!(shown_cgroup(procfs, 99), None);
    }
}
