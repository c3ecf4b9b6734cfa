//! `cargo xtask demo`: the "all gRPC calls hit one pod" story, fixed.
//!
//! Two greeter versions run on loopback. A client "pod" — its own network
//! namespace (no default route) and cgroup — dials the Service VIP
//! 10.96.0.10:8000, which nothing routes. The agent's kernel programs
//! redirect that connection into the agent, which spreads every call of the
//! one HTTP/2 connection over the endpoints. The demo then rewrites the
//! agent's config live: 90:10, then 0:100.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::{
    netns::{self, cgroup2_mount, in_cgroup, remove_cgroup_tree, PodNet},
    setup,
    sh::{self, exec},
};

const NETNS: &str = "balancer-demo";
const HOST_IF: &str = "bdemo0";
const HOST_IP: &str = "10.250.0.1";
const POD_IP: &str = "10.250.0.2";
const VIP: &str = "10.96.0.10:8000";
const LISTEN: &str = "10.250.0.1:15001";
const ADMIN: &str = "127.0.0.1:15000";
const BACKENDS: [(&str, &str); 2] = [("v1", "127.0.0.1:50051"), ("v2", "127.0.0.1:50052")];
const CALLS: u32 = 300;

pub fn run() -> anyhow::Result<()> {
    if !sh::is_root() {
        bail!("demo: needs root (it loads eBPF programs and creates a network namespace and cgroups): run it as root");
    }
    setup::run()?;
    let root = sh::root();
    exec(sh::cargo().current_dir(&root).env_remove("BALANCER_EBPF_STUB").args([
        "build",
        "-p",
        "balancer-agent",
        "-p",
        "greeter",
        "--bins",
    ]))?;
    let bin = sh::target_dir(&root).join("debug");

    let cgroup2 = cgroup2_mount()?;
    let mut demo = Demo::new(cgroup2.join("balancer-demo"));
    demo.setup_network()?;
    fs::create_dir_all(demo.pod_cgroup()).context("demo: cannot create the pod's cgroup")?;

    for (name, addr) in BACKENDS {
        let child = Command::new(bin.join("greeter-server"))
            .args(["--listen", addr, "--name", &format!("greeter-{name}")])
            .stdout(Stdio::null())
            .spawn()
            .context("demo: cannot start greeter-server")?;
        demo.children.push(child);
        sh::wait_for_port(addr.parse()?, Duration::from_secs(10))?;
    }

    let config = demo.dir.join("balancer.yaml");
    fs::write(&config, demo.config(None))?;
    // The agent runs in a cgroup of its own beside the pod's.
    let agent = in_cgroup(&demo.attach.join("agent"), &bin.join("balancer-agent"))?
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .spawn()
        .context("demo: cannot start balancer-agent")?;
    demo.children.push(agent);
    wait_ready(Duration::from_secs(15))?;

    println!(
        "\n== The agent's kernel programs, attached at {}:",
        demo.attach.display()
    );
    let _ = exec(Command::new("bpftool").arg("cgroup").arg("tree").arg(&demo.attach));

    println!("\n== 1. {CALLS} calls over ONE HTTP/2 connection from the pod to {VIP}, no routes: every call balanced on its own");
    demo.client(&bin)?;

    for (step, weights) in [(2, (90, 10)), (3, (0, 100))] {
        fs::write(&config, demo.config(Some(weights)))?;
        // The agent applies a changed file within a second.
        thread::sleep(Duration::from_millis(1500));
        println!(
            "\n== {step}. config rewritten live: v1 {} / v2 {}",
            weights.0, weights.1
        );
        demo.client(&bin)?;
    }
    println!("\n== done: cleaning up");
    Ok(())
}

/// Everything the demo creates, removed on drop (also on error).
struct Demo {
    attach: PathBuf,
    dir: PathBuf,
    children: Vec<Child>,
    net: Option<PodNet>,
}

impl Demo {
    fn new(attach: PathBuf) -> Self {
        let dir = std::env::temp_dir().join(format!("balancer-demo-{}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        Demo {
            attach,
            dir,
            children: Vec::new(),
            net: None,
        }
    }

    fn pod_cgroup(&self) -> PathBuf {
        self.attach.join("pod")
    }

    fn setup_network(&mut self) -> anyhow::Result<()> {
        // No default route: a connect to the VIP that is not redirected
        // fails inside the pod instead of leaving the machine.
        self.net = Some(PodNet::create(NETNS, HOST_IF, HOST_IP, POD_IP)?);
        Ok(())
    }

    fn config(&self, weights: Option<(u32, u32)>) -> String {
        let mut s = format!(
            "# balancer demo: written by `cargo xtask demo`\n\
             listen: {LISTEN}\n\
             admin: {ADMIN}\n\
             attach_cgroup: {attach}\n\
             enroll:\n  - {pod}\n\
             services:\n\
             \x20 - name: greeter\n\
             \x20   vip: {VIP}\n\
             \x20   policy: round-robin\n\
             \x20   endpoints:\n",
            attach = self.attach.display(),
            pod = self.pod_cgroup().display(),
        );
        for (version, addr) in BACKENDS {
            s.push_str(&format!(
                "      - {{ address: {addr}, labels: {{ version: {version} }} }}\n"
            ));
        }
        if let Some((v1, v2)) = weights {
            s.push_str(&format!(
                "    routes:\n\
                 \x20     - matches: [ {{ service: helloworld.Greeter }} ]\n\
                 \x20       backends:\n\
                 \x20         - {{ labels: {{ version: v1 }}, weight: {v1} }}\n\
                 \x20         - {{ labels: {{ version: v2 }}, weight: {v2} }}\n"
            ));
        }
        s
    }

    /// Runs the greeter client inside the pod: first into its cgroup, then
    /// into its network namespace (`ip netns exec` remounts /sys).
    fn client(&self, bin: &Path) -> anyhow::Result<()> {
        let args = [
            "--target".to_owned(),
            VIP.to_owned(),
            "--calls".to_owned(),
            CALLS.to_string(),
        ];
        exec(&mut netns::in_pod(
            &self.pod_cgroup(),
            NETNS,
            &bin.join("greeter-client"),
            &args,
        ))
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The network namespace goes when `net` drops.
        remove_cgroup_tree(&self.attach);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Waits for the agent's `/readyz` (programs attached, config applied).
fn wait_ready(limit: Duration) -> anyhow::Result<()> {
    let admin = ADMIN.parse()?;
    let start = Instant::now();
    while start.elapsed() < limit {
        if sh::http_ok(admin, "/readyz") {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(200));
    }
    bail!("demo: the agent did not become ready on {ADMIN} within {limit:?}")
}
