//! `cargo xtask test`: setup, the lint gates (rustfmt, clippy), a full build
//! (kernel programs included), then every test, and the fuzz targets for a
//! bounded time. As root the privileged tests must run: a skip is a failure.

use std::process::Command;

use crate::{
    fuzz, lint, setup,
    sh::{self, exec},
};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    // Formatting and clippy first: they fail in seconds where the tests take
    // minutes.
    lint::run()?;
    let root = sh::root();
    let privileged = sh::is_root();
    if !privileged {
        eprintln!(
            "test: NOT ROOT — the privileged tests (eBPF, network namespaces, cgroups) will skip; run as root to include them"
        );
    }
    let env = |cmd: &mut Command| {
        cmd.current_dir(&root)
            .env("BALANCER_PYTHON", setup::venv_python())
            .env("BALANCER_HTTPWG", setup::httpwg_bin())
            .env_remove("BALANCER_EBPF_STUB");
        if privileged {
            cmd.env("BALANCER_REQUIRE_PRIVILEGED", "1");
        }
    };

    // Build every binary first: end-to-end tests run the agent, the greeter
    // and balancerctl as processes.
    let mut build = sh::cargo();
    // balancer-ebpf builds only for the BPF target (through the agent's
    // build.rs), never for the host.
    build.args(["build", "--workspace", "--exclude", "balancer-ebpf", "--bins"]);
    env(&mut build);
    exec(&mut build)?;

    // Unit and in-process tests of every crate but the end-to-end suite.
    let mut unit = sh::cargo();
    unit.args([
        "test",
        "--workspace",
        "--exclude",
        "balancer-ebpf",
        "--exclude",
        "balancer-tests",
        "--",
    ])
    .args(args);
    env(&mut unit);
    exec(&mut unit)?;

    // The relay's frame codec and HPACK against arbitrary bytes: the targets
    // must not panic (`cargo xtask fuzz` runs them alone).
    fuzz::run(&[], fuzz::TEST_SECONDS)?;

    // End-to-end tests share namespaces, cgroups and the kernel's attach
    // points: one at a time.
    let mut e2e = sh::cargo();
    e2e.args(["test", "-p", "balancer-tests", "--", "--test-threads=1"])
        .args(args);
    env(&mut e2e);
    exec(&mut e2e)?;
    Ok(())
}
