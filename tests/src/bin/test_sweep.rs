//! `balancer-test-sweep`: one pinned-connection sweep of one pod, printed as
//! a JSON line, for tests that run it where the agent would run (its own
//! PID namespace, the host's /proc at some path).
//!
//! `{"pinned":n,"closed":n,"error":"..."|null,"visible_pids":n,"hidden_pids":n}`
//! where the pid counts are what this process read in the pod's
//! `cgroup.procs` files.

use std::{collections::HashSet, net::SocketAddr, path::PathBuf};

use balancer_agent::pinned::{netns, PodTarget, SweepConfig, Sweeper};
use clap::Parser;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// The pod's cgroup directory.
    #[arg(long)]
    cgroup: PathBuf,
    /// A balanced VIP:port (repeatable).
    #[arg(long)]
    vip: Vec<SocketAddr>,
    #[arg(long, default_value = "/proc")]
    procfs: PathBuf,
    /// Close what is found.
    #[arg(long)]
    remedy: bool,
}

fn main() {
    let args = Args::parse();
    let tree = netns::read_tree(&args.cgroup).unwrap_or_default();
    let mut sweeper = Sweeper::new(SweepConfig {
        procfs: args.procfs,
        ..SweepConfig::default()
    });
    let pods = [PodTarget {
        key: "pod",
        cgroup: args.cgroup,
        remedy: args.remedy,
    }];
    let vips: HashSet<SocketAddr> = args.vip.into_iter().collect();
    let reports = sweeper.sweep(&pods, &vips);
    let out = match reports.first() {
        Some(r) => json!({
            "pinned": r.pinned(),
            "closed": r.closed(),
            "error": r.error.as_ref().map(|e| error_chain(e)),
            "visible_pids": tree.pids.len(),
            "hidden_pids": tree.hidden,
        }),
        None => json!({"error": "no report"}),
    };
    println!("{out}");
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
