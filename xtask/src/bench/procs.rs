//! The processes a bench run starts, and what /proc says about them.

use std::{
    collections::HashMap,
    fs,
    path::Path,
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::sh;

/// A process the bench started. Dropping it stops it and every process it
/// started (SIGTERM, then SIGKILL after a grace period) — by PID only.
pub struct Proc {
    pub name: String,
    child: Child,
    reaped: bool,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Self> {
        eprintln!("+ {}", sh::describe(cmd));
        let child = cmd
            .spawn()
            .with_context(|| format!("bench: cannot start {name} (`{}`)", sh::describe(cmd)))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            reaped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has already exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if self.reaped {
            bail!("bench: {} has exited", self.name);
        }
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                self.reaped = true;
                bail!("bench: {} exited early: {status}", self.name)
            }
            Err(e) => bail!("bench: cannot check {}: {e}", self.name),
        }
    }

    /// Waits for the process to end within `limit` (killed past it) and
    /// returns whether it succeeded and the CPU seconds it used.
    pub fn wait_rusage(&mut self, limit: Duration) -> anyhow::Result<(bool, f64)> {
        let start = Instant::now();
        let pid = self.pid() as libc::pid_t;
        loop {
            let mut status = 0;
            // SAFETY: rusage is plain old data; wait4 fills it in.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: waits only for our own child `pid`, without blocking.
            let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if r == pid {
                self.reaped = true;
                let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
                return Ok((ok, secs(usage.ru_utime) + secs(usage.ru_stime)));
            }
            if r < 0 {
                bail!(
                    "bench: cannot wait for {}: {}",
                    self.name,
                    std::io::Error::last_os_error()
                );
            }
            if start.elapsed() > limit {
                self.stop();
                bail!("bench: {} did not finish within {limit:?}: killed", self.name);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM to the process, SIGKILL to it and its descendants if they are
    /// still there after a grace period. Reaps the process.
    pub fn stop(&mut self) {
        if self.reaped {
            return;
        }
        let pid = self.pid();
        let descendants = tree(pid);
        signal(pid, libc::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.reaped = true;
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
        // Workers of a master process (nginx) that outlived it.
        for p in descendants.into_iter().filter(|&p| p != pid) {
            if parent(p).is_some() {
                signal(p, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory preconditions; pid is a process we started.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Fields of /proc/PID/stat after the command name: index 0 is the state
/// (field 3 of proc(5)).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
}

fn parent(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1).map(|&p| p as u32)
}

/// utime + stime of one process, in clock ticks.
fn ticks(pid: u32) -> u64 {
    stat_fields(pid)
        .map(|f| f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0))
        .unwrap_or(0)
}

pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `pid` and all its descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in all_pids() {
        if let Some(pp) = parent(p) {
            children.entry(pp).or_default().push(p);
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

/// CPU seconds (user + system) used so far by `pid` and its descendants.
pub fn tree_cpu_secs(pid: u32) -> f64 {
    tree(pid).into_iter().map(ticks).sum::<u64>() as f64 / clock_ticks_per_sec()
}

fn status_kb(pid: u32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Peak resident memory (VmHWM) of `pid` and its descendants, in KiB.
pub fn tree_peak_rss_kb(pid: u32) -> u64 {
    tree(pid).into_iter().map(|p| status_kb(p, "VmHWM:")).sum()
}

/// Current resident memory (VmRSS) of `pid` and its descendants, in KiB.
pub fn tree_rss_kb(pid: u32) -> u64 {
    tree(pid).into_iter().map(|p| status_kb(p, "VmRSS:")).sum()
}

/// CPU time processes and kernel threads ran (user, nice and system; not
/// interrupt time nor steal), and the part of it spent by kernel threads
/// (softirq work of loopback traffic lands there), in ticks.
#[derive(Clone, Copy)]
pub struct MachineCpu {
    pub busy: u64,
    pub kernel_threads: u64,
    /// All the work the machine did: `busy` and interrupt time.
    pub work: u64,
    /// The kernel's part of `work`: system and interrupt time.
    pub kernel: u64,
}

impl MachineCpu {
    pub fn now() -> Self {
        // user nice system idle iowait irq softirq steal ...
        let f: Vec<u64> = fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?.to_owned();
                Some(
                    line.split_whitespace()
                        .skip(1)
                        .map(|v| v.parse().unwrap_or(0))
                        .collect(),
                )
            })
            .unwrap_or_default();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        // user nice system: what processes and kernel threads ran. irq and
        // softirq time (loopback traffic of the run itself) and steal (the
        // hypervisor) belong to no process.
        let busy = at(0) + at(1) + at(2);
        let interrupts = at(5) + at(6);
        let kernel_threads = all_pids()
            .into_iter()
            .filter(|&p| p == 2 || parent(p) == Some(2))
            .map(ticks)
            .sum();
        MachineCpu {
            busy,
            kernel_threads,
            work: busy + interrupts,
            kernel: at(2) + interrupts,
        }
    }
}

/// Waiting for a calm machine before each run: at most `per_wait` each
/// time and `budget` in all, so that a machine that stays busy costs a few
/// minutes, not one wait per run.
pub struct Calm {
    per_wait: Duration,
    budget: std::cell::Cell<Duration>,
}

/// Fewer cores than this busy over a one-second sample is calm (the bench's
/// own idle processes use next to nothing).
const CALM_CORES: f64 = 0.3;

impl Calm {
    pub fn new(per_wait: Duration, budget: Duration) -> Self {
        Calm {
            per_wait,
            budget: std::cell::Cell::new(budget),
        }
    }

    /// Waits until the machine is calm; false if it was still busy when
    /// this wait's time (or the whole budget) ran out.
    pub fn wait(&self) -> bool {
        let start = Instant::now();
        let limit = self.per_wait.min(self.budget.get());
        let tps = clock_ticks_per_sec();
        let calm = loop {
            let a = MachineCpu::now();
            thread::sleep(Duration::from_millis(500));
            let b = MachineCpu::now();
            let cores = (b.busy.saturating_sub(a.busy)) as f64 / tps * 2.0;
            if cores < CALM_CORES {
                break true;
            }
            if start.elapsed() >= limit {
                break false;
            }
        };
        self.budget.set(self.budget.get().saturating_sub(start.elapsed()));
        calm
    }

    /// Whether waiting can still help.
    pub fn has_budget(&self) -> bool {
        !self.budget.get().is_zero()
    }
}

/// Raises this process's open-file limit (children inherit it).
pub fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 0;
        }
        if l.rlim_cur >= want {
            return l.rlim_cur;
        }
        let new = libc::rlimit {
            rlim_cur: want.max(l.rlim_cur),
            rlim_max: want.max(l.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &new) == 0 {
            return want;
        }
        // Not root: as far as the hard limit allows.
        let new = libc::rlimit {
            rlim_cur: l.rlim_max,
            rlim_max: l.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &new) == 0 {
            l.rlim_max
        } else {
            l.rlim_cur
        }
    }
}

/// Whether `dir` is a tmpfs mount point (per `/proc/mounts`).
pub fn is_tmpfs(dir: &Path) -> bool {
    fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next(), f.next(), f.next());
            at == dir.to_str() && kind == Some("tmpfs")
        })
    })
}
