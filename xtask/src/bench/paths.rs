//! The paths a call can take from h2load to the greeter backends, and how to
//! start the proxy of each: the balancer agent (explicit listener, or the
//! kernel redirect with the fast path on and off), HAProxy and nginx, all
//! with the same number of threads.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::bail;
use balancer_testing::{http, port, ready};

use super::procs::Proc;
use crate::pod::{Pod, PodSpec};

pub const BACKENDS: [(&str, &str); 3] = [
    ("greeter-1", "127.0.0.1:50161"),
    ("greeter-2", "127.0.0.1:50162"),
    ("greeter-3", "127.0.0.1:50163"),
];
const AGENT_LISTENER: &str = "127.0.0.1:18100";
const HAPROXY: &str = "127.0.0.1:18101";
const NGINX: &str = "127.0.0.1:18102";
const AGENT_ADMIN: &str = "127.0.0.1:15100";

/// The client pod of the kernel-redirect paths.
pub const POD: PodSpec<'static> = PodSpec {
    cgroup: "balancer-bench",
    netns: "balancer-bench",
    host_if: "bbench0",
    host_ip: "10.250.1.1",
    pod_ip: "10.250.1.2",
};
/// The Service VIP the pod dials: nothing routes it.
pub const VIP: &str = "10.96.0.20:8000";
const REDIRECT_LISTEN: &str = "10.250.1.1:15001";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CallPath {
    Direct,
    AgentListener,
    AgentRedirect {
        fast_path: bool,
    },
    Haproxy,
    Nginx,
    /// An earlier build of the agent (`--baseline DIR`) on the explicit
    /// listener, e.g. the last one with the h2 engine.
    Baseline,
}

impl CallPath {
    pub const ALL: [CallPath; 6] = [
        CallPath::Direct,
        CallPath::AgentListener,
        CallPath::AgentRedirect { fast_path: true },
        CallPath::AgentRedirect { fast_path: false },
        CallPath::Haproxy,
        CallPath::Nginx,
    ];

    /// Short name, for `--paths` and file names.
    pub fn key(self) -> &'static str {
        match self {
            CallPath::Direct => "direct",
            CallPath::AgentListener => "listener",
            CallPath::AgentRedirect { fast_path: true } => "redirect",
            CallPath::AgentRedirect { fast_path: false } => "redirect-nofast",
            CallPath::Haproxy => "haproxy",
            CallPath::Nginx => "nginx",
            CallPath::Baseline => "baseline",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            CallPath::Direct => "direct to one backend",
            CallPath::AgentListener => "balancer, explicit listener",
            CallPath::AgentRedirect { fast_path: true } => "balancer, kernel redirect + sk_msg fast path",
            CallPath::AgentRedirect { fast_path: false } => "balancer, kernel redirect, fast path off",
            CallPath::Haproxy => "HAProxy (`http-reuse always`)",
            CallPath::Nginx => "nginx (`grpc_pass`)",
            CallPath::Baseline => "baseline: an earlier agent build (`--baseline`), explicit listener",
        }
    }

    /// A short label for charts.
    pub fn short(self) -> &'static str {
        match self {
            CallPath::Direct => "direct",
            CallPath::AgentListener => "balancer listener",
            CallPath::AgentRedirect { fast_path: true } => "balancer redirect",
            CallPath::AgentRedirect { fast_path: false } => "redirect, no fast path",
            CallPath::Haproxy => "HAProxy",
            CallPath::Nginx => "nginx",
            CallPath::Baseline => "baseline build",
        }
    }

    /// Every path `--paths` knows (the baseline only with `--baseline`).
    pub fn known() -> impl Iterator<Item = CallPath> {
        CallPath::ALL.into_iter().chain([CallPath::Baseline])
    }

    pub fn from_key(key: &str) -> Option<CallPath> {
        CallPath::known().find(|p| p.key() == key)
    }

    pub fn is_agent(self) -> bool {
        matches!(self, CallPath::AgentListener | CallPath::AgentRedirect { .. })
    }

    pub fn needs_root(self) -> bool {
        matches!(self, CallPath::AgentRedirect { .. })
    }
}

/// What the paths share: binaries, a scratch directory, thread count, and
/// the pod for the redirect paths.
pub struct Env {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub threads: u32,
    /// Calls in flight at once (nginx's upstream keepalive must hold them).
    pub in_flight: u32,
    /// The open-file limit every proxy inherits.
    pub nofile: u64,
    pub pod: Option<Pod>,
    /// Where the baseline's `balancer-agent` is.
    pub baseline: Option<PathBuf>,
}

/// A started path: its proxy (none for direct) and where clients dial.
pub struct Running {
    pub proxy: Option<Proc>,
    pub target: String,
    /// Whether the client must run inside the pod.
    pub in_pod: bool,
}

impl Env {
    pub fn start(&self, path: CallPath) -> anyhow::Result<Running> {
        match path {
            CallPath::Direct => Ok(Running {
                proxy: None,
                target: BACKENDS[0].1.to_owned(),
                in_pod: false,
            }),
            CallPath::AgentListener => {
                let proxy = self.agent(&self.bin, false, true)?;
                Ok(Running {
                    proxy: Some(proxy),
                    target: AGENT_LISTENER.to_owned(),
                    in_pod: false,
                })
            }
            CallPath::AgentRedirect { fast_path } => {
                if self.pod.is_none() {
                    bail!("bench: the kernel-redirect path needs root (eBPF, a network namespace, cgroups)");
                }
                let proxy = self.agent(&self.bin, true, fast_path)?;
                Ok(Running {
                    proxy: Some(proxy),
                    target: VIP.to_owned(),
                    in_pod: true,
                })
            }
            CallPath::Baseline => {
                let Some(dir) = &self.baseline else {
                    bail!("bench: the baseline path needs --baseline DIR");
                };
                let proxy = self.agent(dir, false, true)?;
                Ok(Running {
                    proxy: Some(proxy),
                    target: AGENT_LISTENER.to_owned(),
                    in_pod: false,
                })
            }
            CallPath::Haproxy => {
                let cfg = self.dir.join("haproxy.cfg");
                fs::write(&cfg, self.haproxy_config())?;
                let mut proxy = Proc::spawn(
                    "haproxy",
                    Command::new("haproxy")
                        .arg("-db")
                        .arg("-f")
                        .arg(&cfg)
                        .stdout(Stdio::null())
                        .stderr(fs::File::create(self.dir.join("haproxy.err"))?),
                )?;
                wait_listening(&mut proxy, HAPROXY, &self.dir.join("haproxy.err"))?;
                Ok(Running {
                    proxy: Some(proxy),
                    target: HAPROXY.to_owned(),
                    in_pod: false,
                })
            }
            CallPath::Nginx => {
                let prefix = self.dir.join("nginx");
                fs::create_dir_all(prefix.join("logs"))?;
                let cfg = prefix.join("nginx.conf");
                fs::write(&cfg, self.nginx_config(&prefix))?;
                let mut proxy = Proc::spawn(
                    "nginx",
                    Command::new("nginx")
                        .arg("-p")
                        .arg(&prefix)
                        .arg("-c")
                        .arg(&cfg)
                        .args(["-g", "daemon off; master_process on;"])
                        .stdout(Stdio::null())
                        .stderr(fs::File::create(self.dir.join("nginx.err"))?),
                )?;
                wait_listening(&mut proxy, NGINX, &self.dir.join("nginx.err"))?;
                Ok(Running {
                    proxy: Some(proxy),
                    target: NGINX.to_owned(),
                    in_pod: false,
                })
            }
        }
    }

    /// The agent in `bin` (this build's, or the baseline's).
    fn agent(&self, bin: &Path, ebpf: bool, fast_path: bool) -> anyhow::Result<Proc> {
        let cfg = self.dir.join("balancer.yaml");
        fs::write(&cfg, self.agent_config(ebpf, fast_path))?;
        // With the kernel path the agent runs in a cgroup of its own beside
        // the pod's, as a service manager would start it.
        let program = bin.join("balancer-agent");
        let mut cmd = balancer_testing::agent::command(&program, Some(&cfg));
        if let (Some(pod), true) = (&self.pod, ebpf) {
            pod.place_agent(&mut cmd)?;
        }
        cmd.args(["--threads", &self.threads.to_string()])
            .env("RUST_LOG", "warn")
            .env("BALANCER_LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.dir.join("agent.err"))?);
        if !ebpf {
            cmd.arg("--no-ebpf");
        }
        let mut agent = Proc::spawn("balancer-agent", &mut cmd)?;
        let admin: SocketAddr = AGENT_ADMIN.parse()?;
        ready::wait(
            &format!("balancer-agent ready at http://{AGENT_ADMIN}/readyz"),
            Duration::from_secs(20),
            || {
                let e = agent.check_alive().err()?;
                let log = fs::read_to_string(self.dir.join("agent.err")).unwrap_or_default();
                Some(format!("{e}: {}", log.trim()))
            },
            || http::ok(admin, "/readyz"),
        )
        .map_err(|e| anyhow::anyhow!("bench: {e}"))?;
        if !ebpf {
            port::wait_for_port(AGENT_LISTENER.parse()?, Duration::from_secs(10))?;
        }
        Ok(agent)
    }

    pub fn agent_config(&self, ebpf: bool, fast_path: bool) -> String {
        let mut s = String::from("# written by `cargo xtask bench`\n");
        s.push_str(&format!("admin: {AGENT_ADMIN}\n"));
        if let (true, Some(pod)) = (ebpf, &self.pod) {
            s.push_str(&format!(
                "listen: {REDIRECT_LISTEN}\nattach_cgroup: {}\nfast_path: {fast_path}\nenroll:\n  - {}\n",
                pod.attach.path().display(),
                pod.cgroup.path().display()
            ));
        }
        s.push_str(&format!(
            "services:\n  - name: greeter\n    vip: {VIP}\n    listen: {AGENT_LISTENER}\n    policy: round-robin\n    endpoints:\n"
        ));
        for (_, addr) in BACKENDS {
            s.push_str(&format!("      - {{ address: {addr} }}\n"));
        }
        s
    }

    pub fn haproxy_config(&self) -> String {
        let mut s = format!(
            "# written by `cargo xtask bench`\n\
             global\n\
             \x20   nbthread {threads}\n\
             \x20   maxconn {maxconn}\n\
             defaults\n\
             \x20   mode http\n\
             \x20   timeout connect 5s\n\
             \x20   timeout client 60s\n\
             \x20   timeout server 60s\n\
             frontend grpc\n\
             \x20   bind {HAPROXY} proto h2\n\
             \x20   default_backend greeter\n\
             backend greeter\n\
             \x20   balance roundrobin\n\
             \x20   http-reuse always\n",
            threads = self.threads,
            // HAProxy wants two descriptors per connection.
            maxconn = (self.nofile / 2).saturating_sub(100).max(1_000),
        );
        for (name, addr) in BACKENDS {
            s.push_str(&format!("    server {name} {addr} proto h2\n"));
        }
        s
    }

    pub fn nginx_config(&self, prefix: &Path) -> String {
        let servers: String = BACKENDS
            .iter()
            .map(|(_, addr)| format!("        server {addr};\n"))
            .collect();
        let p = prefix.display();
        // Worker processes run as root when the bench does, so they can use
        // the scratch directory.
        let user = if crate::sh::is_root() { "user root;\n" } else { "" };
        format!(
            "# written by `cargo xtask bench`\n\
             {user}worker_processes {threads};\n\
             worker_rlimit_nofile {nofile};\n\
             pid {p}/nginx.pid;\n\
             error_log {p}/logs/error.log warn;\n\
             events {{ worker_connections {conns}; }}\n\
             http {{\n\
             \x20   access_log off;\n\
             \x20   client_body_temp_path {p}/body;\n\
             \x20   proxy_temp_path {p}/proxy;\n\
             \x20   fastcgi_temp_path {p}/fastcgi;\n\
             \x20   uwsgi_temp_path {p}/uwsgi;\n\
             \x20   scgi_temp_path {p}/scgi;\n\
             \x20   keepalive_requests 100000000;\n\
             \x20   client_max_body_size 0;\n\
             \x20   http2_max_concurrent_streams 1024;\n\
             \x20   upstream greeter {{\n\
             {servers}\
             \x20       keepalive {keepalive};\n\
             \x20       keepalive_requests 100000000;\n\
             \x20   }}\n\
             \x20   server {{\n\
             \x20       listen {NGINX} http2;\n\
             \x20       location / {{ grpc_pass grpc://greeter; }}\n\
             \x20   }}\n\
             }}\n",
            threads = self.threads,
            keepalive = (self.in_flight * 2).max(256),
            nofile = self.nofile,
            conns = self.nofile.saturating_sub(100).max(1_000),
        )
    }
}

fn wait_listening(proxy: &mut Proc, addr: &str, log: &Path) -> anyhow::Result<()> {
    let addr: SocketAddr = addr.parse()?;
    let name = proxy.name.clone();
    ready::wait(
        &format!("{name} listening on {addr}"),
        Duration::from_secs(10),
        || {
            let e = proxy.check_alive().err()?;
            let log = fs::read_to_string(log).unwrap_or_default();
            Some(format!("{e}: {}", log.trim()))
        },
        || port::accepts(addr),
    )
    .map_err(|e| anyhow::anyhow!("bench: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(dir: &Path) -> Env {
        Env {
            bin: PathBuf::from("/nonexistent"),
            dir: dir.to_owned(),
            threads: 2,
            in_flight: 128,
            nofile: 20_000,
            pod: None,
            baseline: None,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bench-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn have(tool: &str) -> bool {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            eprintln!("SKIPPED: {tool} is not installed (`cargo xtask bench` installs it)");
        }
        found
    }

    #[test]
    fn haproxy_accepts_its_config() {
        if !have("haproxy") {
            return;
        }
        let dir = scratch("haproxy");
        let cfg = dir.join("haproxy.cfg");
        let text = env(&dir).haproxy_config();
        assert!(text.contains("nbthread 2") && text.contains("http-reuse always"));
        fs::write(&cfg, &text).expect("write");
        let out = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .expect("haproxy -c");
        let _ = fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "haproxy -c: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn nginx_accepts_its_config() {
        if !have("nginx") {
            return;
        }
        let dir = scratch("nginx");
        fs::create_dir_all(dir.join("logs")).expect("logs dir");
        let cfg = dir.join("nginx.conf");
        let text = env(&dir).nginx_config(&dir);
        assert!(text.contains("worker_processes 2;") && text.contains("keepalive 256;"));
        fs::write(&cfg, &text).expect("write");
        let out = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&cfg)
            .arg("-t")
            .output()
            .expect("nginx -t");
        let _ = fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "nginx -t: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn agent_config_enrolls_the_pod_only_with_ebpf() {
        let dir = scratch("agent");
        let e = env(&dir);
        let text = e.agent_config(false, true);
        assert!(text.contains(&format!("listen: {AGENT_LISTENER}")));
        assert!(!text.contains("enroll"));
        for (_, addr) in BACKENDS {
            assert!(text.contains(addr));
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_path_has_a_unique_key() {
        for p in CallPath::known() {
            assert_eq!(CallPath::from_key(p.key()), Some(p));
        }
        assert_eq!(CallPath::from_key("envoy"), None);
    }
}
