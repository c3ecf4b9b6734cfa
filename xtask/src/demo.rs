//! `cargo xtask demo`: the "all gRPC calls hit one pod" story, fixed.
//!
//! Two greeter versions run on loopback. A client "pod" — its own network
//! namespace (no default route) and cgroup — dials the Service VIP
//! 10.96.0.10:8000, which nothing routes. The agent's kernel programs
//! redirect that connection into the agent, which spreads every call of the
//! one HTTP/2 connection over the endpoints. The demo then rewrites the
//! agent's config live: 90:10, then 0:100. Last, locality: the agent's node
//! is in zone-a, the service prefers close endpoints, and its calls stay in
//! zone-a until zone-a's greeter stops, then spill over to zone-b with no
//! call failing.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{bail, Context};
use balancer_testing::{
    agent::{self, AgentProcess, Log},
    port,
    process::ChildGuard,
};

use crate::{
    pod::{Pod, PodSpec},
    setup,
    sh::{self, exec},
};

const POD: PodSpec<'static> = PodSpec {
    cgroup: "balancer-demo",
    netns: "balancer-demo",
    host_if: "bdemo0",
    host_ip: "10.250.0.1",
    pod_ip: "10.250.0.2",
};
const VIP: &str = "10.96.0.10:8000";
const LISTEN: &str = "10.250.0.1:15001";
const ADMIN: &str = "127.0.0.1:15000";
const BACKENDS: [(&str, &str); 2] = [("v1", "127.0.0.1:50051"), ("v2", "127.0.0.1:50052")];
/// The locality scene's greeters: (name, address, zone).
const ZONED: [(&str, &str, &str); 3] = [
    ("zone-a", "127.0.0.1:50053", "zone-a"),
    ("zone-b-1", "127.0.0.1:50054", "zone-b"),
    ("zone-b-2", "127.0.0.1:50055", "zone-b"),
];
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

    let mut demo = Demo::new()?;
    let names = BACKENDS
        .iter()
        .map(|(n, a)| (*n, *a))
        .chain(ZONED.iter().map(|(n, a, _)| (*n, *a)));
    for (name, addr) in names {
        let child = Command::new(bin.join("greeter-server"))
            .args(["--listen", addr, "--name", &format!("greeter-{name}")])
            .stdout(Stdio::null())
            .spawn()
            .context("demo: cannot start greeter-server")?;
        demo.backends.push(ChildGuard::new(child));
        port::wait_for_port(addr.parse()?, Duration::from_secs(10))?;
    }

    let config = demo.dir.join("balancer.yaml");
    fs::write(&config, demo.config(Scene::Spread))?;
    // The agent runs in a cgroup of its own beside the pod's.
    let mut cmd = agent::command(&bin.join("balancer-agent"), Some(&config));
    cmd.env("RUST_LOG", "warn");
    demo.pod.place_agent(&mut cmd)?;
    let agent = AgentProcess::spawn(cmd, Log::Inherit).context("demo: cannot start balancer-agent")?;
    demo.agent
        .insert(agent)
        .wait_readyz(ADMIN.parse()?, Duration::from_secs(15))
        .context("demo: the agent did not become ready")?;

    println!(
        "\n== The agent's kernel programs, attached at {}:",
        demo.pod.attach.path().display()
    );
    let _ = exec(
        Command::new("bpftool")
            .arg("cgroup")
            .arg("tree")
            .arg(demo.pod.attach.path()),
    );

    println!("\n== 1. {CALLS} calls over ONE HTTP/2 connection from the pod to {VIP}, no routes: every call balanced on its own");
    demo.client(&bin)?;

    for (step, weights) in [(2, (90, 10)), (3, (0, 100))] {
        demo.rewrite(&config, Scene::Weights(weights.0, weights.1))?;
        println!(
            "\n== {step}. config rewritten live: v1 {} / v2 {}",
            weights.0, weights.1
        );
        demo.client(&bin)?;
    }

    demo.rewrite(&config, Scene::Locality)?;
    println!(
        "\n== 4. locality: this node is node-1 in zone-a; the service prefers close endpoints \
         (one greeter in zone-a, two in zone-b): every call stays in zone-a"
    );
    demo.client(&bin)?;
    let _ = exec(Command::new(bin.join("balancerctl")).args(["--admin", ADMIN, "service", "show", "greeter"]));

    // The zone-a greeter is the third process started (after v1 and v2).
    let zone_a = demo.backends.remove(BACKENDS.len());
    drop(zone_a);
    println!("\n== 5. zone-a's greeter stopped: the calls spill over to zone-b, and none fails");
    demo.client(&bin)?;

    println!("\n== done: cleaning up");
    Ok(())
}

/// What the agent's config shows.
#[derive(Clone, Copy)]
enum Scene {
    /// v1 and v2, no routes: every call balanced on its own.
    Spread,
    /// v1 and v2 split by weight.
    Weights(u32, u32),
    /// The zoned greeters, with the agent in zone-a and PreferClose.
    Locality,
}

/// Everything the demo creates, removed on drop (also on error). Fields
/// drop in order: the processes before the pod's cgroups.
struct Demo {
    agent: Option<AgentProcess>,
    backends: Vec<ChildGuard>,
    pod: Pod,
    dir: PathBuf,
}

impl Demo {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("balancer-demo-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("demo: cannot create {}", dir.display()))?;
        Ok(Demo {
            agent: None,
            backends: Vec::new(),
            // No default route: a connect to the VIP that is not redirected
            // fails inside the pod instead of leaving the machine.
            pod: Pod::create(&POD)?,
            dir,
        })
    }

    /// Writes the config of `scene`; the agent applies a changed file within
    /// a second.
    fn rewrite(&self, config: &Path, scene: Scene) -> anyhow::Result<()> {
        fs::write(config, self.config(scene))?;
        thread::sleep(Duration::from_millis(1500));
        Ok(())
    }

    fn config(&self, scene: Scene) -> String {
        let locality = matches!(scene, Scene::Locality);
        let mut s = format!(
            "# balancer demo: written by `cargo xtask demo`\n\
             listen: {LISTEN}\n\
             admin: {ADMIN}\n\
             attach_cgroup: {attach}\n\
             enroll:\n  - {pod}\n\
             {here}\
             services:\n\
             \x20 - name: greeter\n\
             \x20   vip: {VIP}\n\
             \x20   policy: round-robin\n\
             {distribution}\
             \x20   endpoints:\n",
            attach = self.pod.attach.path().display(),
            pod = self.pod.cgroup.path().display(),
            here = if locality { "zone: zone-a\nnode: node-1\n" } else { "" },
            distribution = if locality {
                "    traffic_distribution: PreferClose\n"
            } else {
                ""
            },
        );
        if locality {
            for (name, addr, zone) in ZONED {
                s.push_str(&format!(
                    "      - {{ address: {addr}, labels: {{ name: {name} }}, zone: {zone} }}\n"
                ));
            }
            return s;
        }
        for (version, addr) in BACKENDS {
            s.push_str(&format!(
                "      - {{ address: {addr}, labels: {{ version: {version} }} }}\n"
            ));
        }
        if let Scene::Weights(v1, v2) = scene {
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

    /// Runs the greeter client inside the pod.
    fn client(&self, bin: &Path) -> anyhow::Result<()> {
        let args = [
            "--target".to_owned(),
            VIP.to_owned(),
            "--calls".to_owned(),
            CALLS.to_string(),
        ];
        exec(&mut self.pod.command(&bin.join("greeter-client"), &args)?)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // The processes, the pod's cgroups and its namespace go with their
        // guards.
        let _ = fs::remove_dir_all(&self.dir);
    }
}
