//! balancer's project tasks.
//!
//! `cargo xtask setup` installs what a bare machine lacks, `cargo xtask lint`
//! runs the formatting and clippy gates, `cargo xtask test` runs them and
//! every test, `cargo xtask fuzz` fuzzes the relay's frame codec and HPACK,
//! `cargo xtask demo` shows per-call balancing through the kernel redirect,
//! `cargo xtask bench` compares with HAProxy and nginx, and `cargo xtask
//! bench --scale` measures the agent against large clusters.

mod bench;
mod demo;
mod fuzz;
mod lint;
mod pod;
mod setup;
mod sh;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "balancer's project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: Debian packages, nightly rust-src, rustfmt and
    /// clippy, bpf-linker, the Python test peers. Idempotent.
    Setup,
    /// Check formatting (rustfmt) and run clippy with warnings denied on every
    /// crate, the kernel programs included (needs what setup installs).
    Lint,
    /// Run setup and the lint gates, build everything and run every test
    /// (privileged tests included when root).
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Fuzz balancer-relay's frame codec and HPACK (cargo-fuzz on nightly;
    /// needs what setup installs); a crash fails with the input's path.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = fuzz::TEST_SECONDS)]
        seconds: u32,
        /// Targets to run (default: all of them).
        targets: Vec<String>,
    },
    /// Run the demo: one client pod, two greeter versions, weights changed
    /// live (needs root).
    Demo,
    /// Compare balancer with HAProxy and nginx on this machine and write
    /// docs/benchmarks.md (needs root for the kernel-redirect paths);
    /// `--scale`: the agent against clusters of 1,000 and 10,000 Services.
    Bench(bench::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Lint => lint::run(),
        Task::Test { args } => test::run(&args),
        Task::Fuzz { seconds, targets } => fuzz::run(&targets, seconds),
        Task::Demo => demo::run(),
        Task::Bench(args) => bench::run(args),
    }
}
