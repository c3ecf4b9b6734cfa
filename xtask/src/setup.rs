//! `cargo xtask setup`: install what a bare Debian 12 machine lacks, and only
//! that. Every step checks first, so a second run does nothing.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context};

use crate::sh::{self, exec, output};

/// Debian packages and why they are needed.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("make", "building jemalloc, the agent's allocator"),
    ("llvm-22-dev", "bpf-linker links the kernel programs with LLVM 22"),
    ("libpolly-22-dev", "bpf-linker's LLVM 22 build"),
    ("libzstd-dev", "bpf-linker's LLVM 22 build"),
    ("zlib1g-dev", "bpf-linker's LLVM 22 build"),
    ("iproute2", "tests and demo create network namespaces and veths"),
    ("bpftool", "inspecting the attached programs"),
    ("protobuf-compiler", "the greeter's gRPC code generation"),
    ("python3-venv", "the Python gRPC test peers' virtualenv"),
    ("haproxy", "the benchmark's reference proxy (its config is tested)"),
    ("nginx", "the benchmark's reference proxy (its config is tested)"),
    (
        "nghttp2-client",
        "h2load and nghttp: the benchmark's load and gRPC checks",
    ),
];

/// The bpf-linker release that matches Debian's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Tools the tests run, built with `cargo install --locked`: the crate, the
/// version requirement, and why.
const CARGO_TOOLS: &[(&str, &str, &str)] = &[
    (
        "cargo-fuzz",
        "^0.13",
        "fuzzing the relay's frame codec and HPACK (balancer-relay/fuzz)",
    ),
    (
        "httpwg-cli",
        "=0.2.5",
        "the relay's RFC 9113 conformance test (tests/tests/relay_h2_conformance.rs reads its output)",
    ),
];

pub fn run() -> anyhow::Result<()> {
    apt(APT_PACKAGES)?;
    rust_components()?;
    bpf_linker()?;
    cargo_tools()?;
    python_peers()?;
    eprintln!("setup: everything is installed");
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

/// Installs the missing ones of `packages` with apt-get.
pub fn apt(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(p, _)| !dpkg_installed(p))
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !sh::is_root() {
        bail!(
            "setup: Debian packages missing and not root: run `sudo apt-get install -y {}` or rerun as root",
            missing.join(" ")
        );
    }
    eprintln!("setup: installing Debian packages {}", missing.join(" "));
    exec(Command::new("apt-get").args(["update", "-q"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The rustup components the build and the lint gates use: nightly's
/// `rust-src` (the kernel programs build `core` from source) and `clippy`
/// (they are linted with the toolchain that builds them); `rustfmt` and
/// `clippy` for the toolchain running this task.
fn rust_components() -> anyhow::Result<()> {
    let nightly = output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .context(
        "setup: the nightly toolchain is needed to build the kernel programs (rustup toolchain nightly)",
    )?;
    add_missing_components(&nightly, &["rust-src", "clippy"], Some("nightly"))?;
    // Without --toolchain, rustup answers for the toolchain that runs cargo
    // (RUSTUP_TOOLCHAIN, set by its proxy) or the default one.
    let current = output(Command::new("rustup").args(["component", "list", "--installed"]))
        .context("setup: rustup cannot list the components of the current toolchain")?;
    add_missing_components(&current, &["rustfmt", "clippy"], None)
}

/// Adds those of `wanted` that `installed` (rustup's list) lacks.
fn add_missing_components(installed: &str, wanted: &[&str], toolchain: Option<&str>) -> anyhow::Result<()> {
    let missing = missing_components(installed, wanted);
    if missing.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["component", "add"]).args(&missing);
    if let Some(t) = toolchain {
        cmd.args(["--toolchain", t]);
    }
    exec(&mut cmd)
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn bpf_linker() -> anyhow::Result<()> {
    let have = output(Command::new("bpf-linker").arg("--version"))
        .or_else(|| output(Command::new(cargo_bin_dir().join("bpf-linker")).arg("--version")));
    if let Some(v) = &have {
        if v.contains(&format!(" {BPF_LINKER_VERSION}.")) {
            return Ok(());
        }
        eprintln!("setup: replacing {} with bpf-linker {BPF_LINKER_VERSION}", v.trim());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)");
    let path = format!("{LLVM_PREFIX}/bin:{}", std::env::var("PATH").unwrap_or_default());
    exec(
        sh::cargo()
            .args(["install", "bpf-linker", "--locked", "--force", "--no-default-features"])
            .args(["--version", &format!("^{BPF_LINKER_VERSION}")])
            .args(["--features", "llvm-22"])
            .env("PATH", path)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
}

/// `cargo install`s each of [`CARGO_TOOLS`] that is missing. cargo-fuzz
/// answers `cargo fuzz --version`; httpwg has no version flag, so its crate
/// is looked up in `cargo install --list`.
fn cargo_tools() -> anyhow::Result<()> {
    let installed = output(sh::cargo().args(["install", "--list"])).unwrap_or_default();
    for &(krate, version, why) in CARGO_TOOLS {
        let have = match krate {
            "cargo-fuzz" => output(sh::cargo().args(["fuzz", "--version"]))
                .is_some_and(|v| v.starts_with(&format!("cargo-fuzz {}", version.trim_start_matches('^')))),
            _ => installed_crate(&installed, krate, version),
        };
        if have {
            continue;
        }
        eprintln!("setup: building {krate} {version} ({why}; about a minute)");
        exec(
            sh::cargo()
                .args(["install", krate, "--locked", "--force"])
                .args(["--version", version]),
        )?;
    }
    Ok(())
}

/// True when `cargo install --list` (`installed`) has `krate` at `version`
/// (`=x.y.z` or `^x.y`).
fn installed_crate(installed: &str, krate: &str, version: &str) -> bool {
    let want = version.trim_start_matches(['=', '^']);
    installed.lines().any(|l| {
        l.strip_prefix(krate)
            .and_then(|rest| rest.strip_prefix(" v"))
            .is_some_and(|v| v.trim_end_matches(':') == want || v.starts_with(&format!("{want}.")))
    })
}

/// httpwg, the HTTP/2 conformance client: where `cargo install httpwg-cli`
/// puts it, else from `PATH`.
pub fn httpwg_bin() -> PathBuf {
    let in_cargo_bin = cargo_bin_dir().join("httpwg");
    if in_cargo_bin.exists() {
        return in_cargo_bin;
    }
    PathBuf::from("httpwg")
}

/// Those of `wanted` absent from `installed`, rustup's list of installed
/// components: one a line, named with their target (`clippy-x86_64-…`) or
/// without (`rust-src`).
fn missing_components<'a>(installed: &str, wanted: &[&'a str]) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|w| {
            !installed
                .lines()
                .any(|l| l == *w || l.strip_prefix(w).is_some_and(|rest| rest.starts_with('-')))
        })
        .collect()
}

/// The virtualenv that holds the Python gRPC peers (grpcio).
pub fn venv_python() -> PathBuf {
    sh::root().join(".venv/bin/python")
}

fn python_peers() -> anyhow::Result<()> {
    let requirements = sh::root().join("tests/python/requirements.txt");
    if !requirements.exists() {
        return Ok(());
    }
    let python = venv_python();
    if !python.exists() {
        exec(
            Command::new("python3")
                .args(["-m", "venv"])
                .arg(sh::root().join(".venv")),
        )?;
    }
    // `pip install` with pinned versions is a no-op when they are present,
    // but it still asks the index; check first so setup works offline.
    let check = Command::new(&python)
        .args(["-m", "pip", "install", "--dry-run", "--no-index", "-q", "-r"])
        .arg(&requirements)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if check.is_ok_and(|s| s.success()) {
        return Ok(());
    }
    exec(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
    )
}

#[cfg(test)]
mod tests {
    use super::{installed_crate, missing_components};

    #[test]
    fn cargo_installed_crates_match_name_and_version() {
        let list = "bpf-linker v0.13.1:\n    bpf-linker\nhttpwg-cli v0.2.5:\n    httpwg\n";
        assert!(installed_crate(list, "httpwg-cli", "=0.2.5"));
        assert!(installed_crate(list, "bpf-linker", "^0.13"));
        assert!(!installed_crate(list, "httpwg-cli", "=0.2.6"));
        assert!(!installed_crate(list, "httpwg", "=0.2.5"));
        assert!(!installed_crate(list, "bpf-linker", "^0.1"));
    }

    #[test]
    fn components_match_with_or_without_their_target() {
        let installed = "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\nrust-src\nrust-std-x86_64-unknown-linux-gnu\n";
        assert!(missing_components(installed, &["rust-src", "clippy"]).is_empty());
        assert_eq!(missing_components(installed, &["rustfmt", "clippy"]), vec!["rustfmt"]);
        // A longer name that starts with the wanted one is another component.
        assert_eq!(missing_components("rust-srcx\n", &["rust-src"]), vec!["rust-src"]);
    }
}
