//! Privileged tests: run as root, one at a time; otherwise skip loudly, or
//! fail when `BALANCER_REQUIRE_PRIVILEGED=1` (set by `cargo xtask test`).

use std::sync::{Mutex, MutexGuard};

/// Env switch that turns a skip into a failure.
pub const REQUIRE_ENV: &str = "BALANCER_REQUIRE_PRIVILEGED";

/// Why privileged tests cannot run here, if they cannot.
pub fn missing_privilege() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if balancer_agent::cgroup::cgroup2_mount().is_err() {
        return Some("no cgroup v2 hierarchy mounted".into());
    }
    match std::process::Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        _ => return Some("`ip` (iproute2) not found".into()),
    }
    None
}

/// Whether the calling privileged test may run. Prints the reason when it
/// may not; panics instead when `BALANCER_REQUIRE_PRIVILEGED=1`.
pub fn privileged(test: &str) -> bool {
    let Some(reason) = missing_privilege() else {
        return true;
    };
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("{test}: cannot run privileged test ({reason}) and {REQUIRE_ENV}=1");
    }
    // Straight to the process's stderr: the test harness captures
    // `eprintln!` of passing tests, and a skip must not go unnoticed.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {reason} (privileged test; set {REQUIRE_ENV}=1 to make this a failure)"
    );
    false
}

/// Serialises privileged tests within one test process: they share the
/// kernel and the CPUs, and the kernel tests measure both.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`privileged`] then [`serial`]: `None` means skip the test.
pub fn serial_or_skip(test: &str) -> Option<MutexGuard<'static, ()>> {
    privileged(test).then(serial)
}
