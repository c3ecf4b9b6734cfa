//! `balancerctl`: look inside a running agent, bpftool-style.
//!
//! `balancerctl [-j|--json] [-p|--pretty] [--admin ADDR] OBJECT COMMAND [ARGS]`
//!
//! Everything comes from the agent's admin API; `prog` and `map` can read the
//! kernel directly instead (`--kernel`, needs root).

pub mod client;
mod explain;
mod gateways;
mod show;
pub mod table;

use std::{io::Write, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand};
use serde::Serialize;

pub use client::AdminClient;

/// Default admin address (the agent's default).
pub const DEFAULT_ADMIN: &str = crate::admin::DEFAULT_ADDR;

/// Why a `balancerctl` command failed. Printed with its sources
/// ([`crate::error::Chain`]) on one line.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(
        "cannot reach the agent's admin API at {addr} (is balancer-agent running? set --admin or BALANCERCTL_ADMIN)"
    )]
    AgentNotRunning {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bad admin address `{addr}`")]
    BadAddress {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bad admin address `{0}`: it resolves to no address")]
    NoAddress(String),
    #[error("agent answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("reading the answer from {addr}")]
    Read {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed answer from {addr}: {reason}")]
    Malformed { addr: String, reason: String },
    #[error("unexpected answer to {path} from {addr}")]
    Decode {
        path: String,
        addr: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("encoding the output as JSON")]
    Encode(#[source] serde_json::Error),
    #[error("--kernel reads the kernel's programs and maps directly and needs root (run as root, or drop --kernel to ask the agent)")]
    NotRoot,
    #[error(transparent)]
    Kernel(crate::admin::KernelError),
    #[error("no balancer program with id {0}")]
    NoProgram(u32),
    #[error("no balancer map named `{0}`")]
    NoMap(String),
    #[error("--kernel applies to `prog` and `map` only")]
    KernelOnlyForProgAndMap,
    #[error("writing the output")]
    Output(#[from] std::io::Error),
}

#[derive(Debug, Parser)]
#[command(
    name = "balancerctl",
    version,
    about = "Inspect a running balancer agent: programs, maps, services, endpoints, pods, connections, live stats",
    after_help = "Examples:\n  balancerctl service show\n  balancerctl -p endpoint show greeter\n  balancerctl map dump SERVICES\n  balancerctl --kernel prog show\n  balancerctl stats --watch"
)]
pub struct Cli {
    /// JSON output (the admin API's documents).
    #[arg(short = 'j', long, global = true)]
    pub json: bool,
    /// Pretty-printed JSON output (implies --json).
    #[arg(short = 'p', long, global = true)]
    pub pretty: bool,
    /// The agent's admin address (default: the one the agent wrote into
    /// $BALANCER_RUN_DIR, as in the DaemonSet's pods, else 127.0.0.1:15000).
    #[arg(long, global = true, value_name = "ADDR", env = "BALANCERCTL_ADMIN")]
    pub admin: Option<String>,
    /// `prog`/`map`: read the kernel directly (the programs named `bal_*`)
    /// instead of asking the agent. Needs root.
    #[arg(long, global = true)]
    pub kernel: bool,
    #[command(subcommand)]
    pub object: Object,
}

impl Cli {
    /// `--admin`, else this pod's instance (`$BALANCER_RUN_DIR`), else the
    /// default.
    pub fn admin_address(&self) -> String {
        match &self.admin {
            Some(a) => a.clone(),
            None => {
                let run_dir = std::env::var_os("BALANCER_RUN_DIR").map(std::path::PathBuf::from);
                client::admin_address(None, run_dir.as_deref())
            }
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Object {
    /// The agent's kernel programs.
    #[command(visible_alias = "program")]
    Prog {
        #[command(subcommand)]
        cmd: Option<ProgCmd>,
    },
    /// The agent's kernel maps.
    Map {
        #[command(subcommand)]
        cmd: Option<MapCmd>,
    },
    /// Balanced services: VIPs, policy, routes, calls.
    #[command(visible_alias = "svc")]
    Service {
        #[command(subcommand)]
        cmd: Option<ServiceCmd>,
    },
    /// Gateways: listeners for clients outside the cluster and the routes
    /// that send their calls to services.
    #[command(visible_alias = "gw")]
    Gateway {
        #[command(subcommand)]
        cmd: Option<GatewayCmd>,
    },
    /// A service's endpoints: state, ejection, load, latency, calls, errors.
    #[command(visible_alias = "ep")]
    Endpoint {
        #[command(subcommand)]
        cmd: EndpointCmd,
    },
    /// Enrolled pods (cgroups whose connections are redirected).
    Pod {
        #[command(subcommand)]
        cmd: Option<ShowCmd>,
    },
    /// Client connections held by the agent.
    #[command(visible_alias = "connection")]
    Conn {
        #[command(subcommand)]
        cmd: Option<ShowCmd>,
    },
    /// Per-service calls/s, p50, p99 and errors.
    Stats {
        /// Redraw every second (interval rates) until interrupted.
        #[arg(short, long)]
        watch: bool,
        /// With --watch: stop after this many refreshes.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Readiness, source and sync state of the agent.
    Status,
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProgCmd {
    /// List the programs (or one, by id).
    #[command(visible_alias = "list")]
    Show { id: Option<u32> },
}

#[derive(Debug, Subcommand)]
pub enum MapCmd {
    /// List the maps.
    #[command(visible_alias = "list")]
    Show,
    /// Every entry of a map (by name or id), keys and values decoded.
    Dump { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// List the services, or show one in detail.
    #[command(visible_alias = "list")]
    Show { name: Option<String> },
    /// What the agent would do with a call: the route that matches, its
    /// backends and their shares, the locality tiers and the endpoints that
    /// may take it (nothing is sent).
    Explain {
        name: String,
        /// The call's method, `package.Service/Method` (a leading `/` is
        /// fine).
        method: String,
        /// A request header of the call, `name=value` (repeatable).
        #[arg(short = 'H', long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
    },
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    Ok((k.trim().to_ascii_lowercase(), v.to_owned()))
}

#[derive(Debug, Subcommand)]
pub enum GatewayCmd {
    /// List the gateways, or show one in detail.
    #[command(visible_alias = "list")]
    Show { name: Option<String> },
}

#[derive(Debug, Subcommand)]
pub enum EndpointCmd {
    /// The endpoints of SERVICE.
    #[command(visible_alias = "list")]
    Show { service: String },
}

#[derive(Debug, Subcommand)]
pub enum ShowCmd {
    /// List them.
    #[command(visible_alias = "list")]
    Show,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Pretty,
}

impl Cli {
    pub fn format(&self) -> Format {
        if self.pretty {
            Format::Pretty
        } else if self.json {
            Format::Json
        } else {
            Format::Table
        }
    }
}

/// Prints `value` as JSON in `format` (Json or Pretty).
pub(crate) fn print_json<T: Serialize>(out: &mut dyn Write, format: Format, value: &T) -> Result<(), CtlError> {
    let s = if format == Format::Pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    }
    .map_err(CtlError::Encode)?;
    writeln!(out, "{s}")?;
    Ok(())
}

/// Runs one command, writing to `out`.
pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<(), CtlError> {
    let client = AdminClient::new(&cli.admin_address());
    let format = cli.format();
    if cli.kernel && !matches!(cli.object, Object::Prog { .. } | Object::Map { .. }) {
        return Err(CtlError::KernelOnlyForProgAndMap);
    }
    match &cli.object {
        Object::Prog { cmd } => {
            let id = match cmd {
                Some(ProgCmd::Show { id }) => *id,
                None => None,
            };
            show::programs(cli, &client, out, format, id)
        }
        Object::Map {
            cmd: None | Some(MapCmd::Show),
        } => show::maps(cli, &client, out, format),
        Object::Map {
            cmd: Some(MapCmd::Dump { name }),
        } => show::map_dump(cli, &client, out, format, name),
        Object::Service {
            cmd: Some(ServiceCmd::Explain { name, method, headers }),
        } => explain::explain(&client, out, format, name, method, headers),
        Object::Service { cmd } => {
            let name = match cmd {
                Some(ServiceCmd::Show { name }) => name.as_deref(),
                _ => None,
            };
            show::services(&client, out, format, name)
        }
        Object::Gateway { cmd } => {
            let name = match cmd {
                Some(GatewayCmd::Show { name }) => name.as_deref(),
                None => None,
            };
            gateways::gateways(&client, out, format, name)
        }
        Object::Endpoint {
            cmd: EndpointCmd::Show { service },
        } => show::endpoints(&client, out, format, service),
        Object::Pod { .. } => show::pods(&client, out, format),
        Object::Conn { .. } => show::conns(&client, out, format),
        Object::Status => show::status(&client, out, format),
        Object::Stats { watch, count } => show::stats(&client, out, format, *watch, *count),
        Object::Completion { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "balancerctl", out);
            Ok(())
        }
    }
}

/// The `balancerctl` binary: parse, run, one-line errors, exit codes
/// (0 success, 1 failure, 2 usage).
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                        ExitCode::from(2)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                _ => {
                    eprintln!("balancerctl: {}", usage_error(&e));
                    ExitCode::from(2)
                }
            };
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match run(&cli, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`balancerctl ... | head`) is not an error.
        Err(CtlError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("balancerctl: {}", crate::error::Chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// One line for a clap error: unknown objects and commands name what was
/// expected.
fn usage_error(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() == ErrorKind::InvalidSubcommand {
        let bad = match e.get(ContextKind::InvalidSubcommand) {
            Some(ContextValue::String(s)) => s.clone(),
            _ => String::new(),
        };
        return format!("unknown object or command `{bad}` (see balancerctl --help)");
    }
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("invalid arguments");
    format!("{} (see --help)", first.trim_start_matches("error: "))
}
