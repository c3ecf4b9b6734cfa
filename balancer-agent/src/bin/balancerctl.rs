//! `balancerctl`: inspect a running balancer agent (see `balancerctl --help`).

fn main() -> std::process::ExitCode {
    balancer_agent::ctl::main()
}
