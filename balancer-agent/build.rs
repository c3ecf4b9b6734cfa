//! Builds the kernel programs (`balancer-ebpf`, binary `balancer`) for
//! `bpfel-unknown-none` with nightly `-Z build-std=core` and bpf-linker, and
//! leaves the object in `OUT_DIR/balancer` for the loader to embed.
//!
//! `BALANCER_EBPF_STUB=1` writes an empty object instead, so that clippy and
//! unit tests run without nightly or bpf-linker; the loader then refuses to
//! load with a message saying so.

use std::{env, fs, path::PathBuf};

use anyhow::{anyhow, Context as _};

const STUB_ENV: &str = "BALANCER_EBPF_STUB";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={STUB_ENV}");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let stub = env::var(STUB_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if stub {
        println!(
            "cargo:warning={STUB_ENV}=1: embedding an empty eBPF object; the agent cannot load its kernel programs"
        );
        let dst = out_dir.join("balancer");
        fs::write(&dst, b"").with_context(|| format!("writing {}", dst.display()))?;
        return Ok(());
    }
    let ebpf_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("balancer-agent has no parent directory"))?
        .join("balancer-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    let package = aya_build::Package {
        name: "balancer-ebpf",
        root_dir: ebpf_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default()).context(
        "building the kernel programs (needs nightly with rust-src and bpf-linker: run `cargo xtask setup`, \
         or set BALANCER_EBPF_STUB=1 to build without them)",
    )
}
