//! `cargo xtask fuzz`: the fuzz targets of balancer-relay
//! (`balancer-relay/fuzz`, cargo-fuzz on nightly), each for a bounded time.
//! `cargo xtask test` runs every target for [`TEST_SECONDS`].
//!
//! Each target starts from its committed seeds (`corpus/<target>/`) and from
//! what earlier runs found (`<target dir>/fuzz/corpus/<target>/`, where
//! libFuzzer adds new inputs). A crash, a hang or a leak leaves the input in
//! `balancer-relay/fuzz/artifacts/<target>/` and fails with its path.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::bail;

use crate::sh::{self, exec};

/// Every fuzz target (the `[[bin]]`s of balancer-relay/fuzz/Cargo.toml).
pub const TARGETS: &[&str] = &["frame", "hpack"];
/// How long `cargo xtask test` runs each target.
pub const TEST_SECONDS: u32 = 30;
/// cargo-fuzz needs nightly (`-Zsanitizer=address`).
const TOOLCHAIN: &str = "nightly";
/// An input that runs this long is a hang.
const INPUT_TIMEOUT_SECONDS: u32 = 10;

/// Runs `targets` (all when empty) for `seconds` each.
pub fn run(targets: &[String], seconds: u32) -> anyhow::Result<()> {
    let targets: Vec<&str> = match targets {
        [] => TARGETS.to_vec(),
        some => some.iter().map(String::as_str).collect(),
    };
    if let Some(unknown) = targets.iter().find(|t| !TARGETS.contains(t)) {
        bail!("no fuzz target `{unknown}` (there are: {})", TARGETS.join(", "));
    }
    let root = sh::root();
    let fuzz_dir = root.join("balancer-relay/fuzz");
    // A directory of its own: the sanitizer flags would rebuild everything
    // that the workspace's builds share.
    let build_dir = sh::target_dir(&root).join("fuzz");
    for target in targets {
        let found = build_dir.join("corpus").join(target);
        std::fs::create_dir_all(&found)?;
        let artifacts = fuzz_dir.join("artifacts").join(target);
        let before = files(&artifacts);
        let mut cmd = Command::new("rustup");
        cmd.current_dir(&fuzz_dir)
            .args(["run", TOOLCHAIN, "cargo", "fuzz", "run", "--target-dir"])
            .arg(&build_dir)
            .arg(target)
            // libFuzzer adds to the first directory only.
            .arg(&found)
            .arg(fuzz_dir.join("corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
            // The outer cargo's compiler and wrappers belong to the stable
            // toolchain; nightly's cargo must pick its own.
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("RUSTUP_TOOLCHAIN");
        if let Err(e) = exec(&mut cmd) {
            let crashes: Vec<PathBuf> = files(&artifacts).difference(&before).cloned().collect();
            if crashes.is_empty() {
                return Err(e.context(format!("fuzz target `{target}` failed before finding a crash")));
            }
            let list: Vec<String> = crashes.iter().map(|p| p.display().to_string()).collect();
            bail!(
                "fuzz target `{target}` failed on {}\n(reproduce: cd balancer-relay/fuzz && cargo +{TOOLCHAIN} fuzz run {target} {})",
                list.join(", "),
                list[0]
            );
        }
    }
    Ok(())
}

/// The files in `dir` (none when it does not exist).
fn files(dir: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}
