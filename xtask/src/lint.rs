//! `cargo xtask lint`: the gates `cargo xtask test` passes first — rustfmt,
//! clippy on the host crates, and clippy on the kernel programs with the
//! toolchain that builds them.

use std::process::Command;

use crate::sh::{self, exec};

/// The toolchain and target the kernel programs build with (see
/// `balancer-agent/build.rs`).
const EBPF_TOOLCHAIN: &str = "nightly";
const EBPF_TARGET: &str = "bpfel-unknown-none";

/// Runs every gate; the first one that fails stops the rest.
pub fn run() -> anyhow::Result<()> {
    fmt()?;
    clippy_host()?;
    clippy_ebpf()
}

/// `cargo fmt --check` on every crate (rustfmt.toml at the root), the fuzz
/// targets' workspace included.
fn fmt() -> anyhow::Result<()> {
    let mut cmd = sh::cargo();
    cmd.current_dir(sh::root()).args(["fmt", "--all", "--", "--check"]);
    exec(&mut cmd)?;
    let mut fuzz = sh::cargo();
    fuzz.current_dir(sh::root()).args([
        "fmt",
        "--manifest-path",
        "balancer-relay/fuzz/Cargo.toml",
        "--",
        "--check",
    ]);
    exec(&mut fuzz)
}

/// Clippy with warnings denied on every host crate and all their targets.
/// The agent embeds an empty kernel object here (`BALANCER_EBPF_STUB=1`):
/// the object does not change what clippy sees, and clippy's build-script
/// run is not the build's, so the real one would be built twice.
fn clippy_host() -> anyhow::Result<()> {
    let mut cmd = sh::cargo();
    cmd.current_dir(sh::root())
        .args(["clippy", "--workspace", "--exclude", "balancer-ebpf", "--all-targets"])
        .args(["--", "-D", "warnings"])
        .env("BALANCER_EBPF_STUB", "1");
    exec(&mut cmd)
}

/// Clippy on the kernel programs: nightly, for the BPF target, with `core`
/// built from source — the way the agent's build script builds them, so the
/// code clippy sees is the code that is loaded.
fn clippy_ebpf() -> anyhow::Result<()> {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(sh::root())
        .args(["run", EBPF_TOOLCHAIN, "cargo", "clippy", "--package", "balancer-ebpf"])
        .args(["--target", EBPF_TARGET, "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"])
        // The outer cargo's compiler and wrappers belong to the stable
        // toolchain; nightly's cargo must pick its own.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN");
    exec(&mut cmd)
}
