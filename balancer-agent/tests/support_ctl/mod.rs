//! Running `balancerctl` against an admin server and reading its tables,
//! for the tests that check what an operator sees.

#![allow(dead_code, reason = "shared by several test crates, each using a part of it")]

use std::{
    net::SocketAddr,
    process::{Command, Output},
};

/// `balancerctl --admin ADMIN ARGS...`, run to its end, whatever its exit.
pub fn run(admin: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_balancerctl"))
        .arg("--admin")
        .arg(admin)
        .args(args)
        .env_remove("BALANCERCTL_ADMIN")
        .output()
        .expect("run balancerctl")
}

/// `balancerctl --admin ADMIN ARGS...`'s standard output; it must succeed.
pub fn ctl(admin: SocketAddr, args: &[&str]) -> String {
    let out = run(&admin.to_string(), args);
    assert!(
        out.status.success(),
        "balancerctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// One row of a table: (header, cell) pairs.
pub type Row = Vec<(String, String)>;

/// The rows of the table that opens `text` (up to its first blank line),
/// as header → cell lookups; cells are separated by at least two spaces.
/// A note under a pod's row (a failed sweep) is not a row.
pub fn table(text: &str) -> Vec<Row> {
    let split = |l: &str| -> Vec<String> {
        l.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut lines = text.lines().take_while(|l| !l.trim().is_empty());
    let head = split(lines.next().expect("header"));
    lines
        .filter(|l| !l.contains("sweep failed"))
        .map(|l| head.iter().cloned().zip(split(l)).collect())
        .collect()
}

/// The cell of `row` under header `col`.
pub fn cell<'a>(row: &'a [(String, String)], col: &str) -> &'a str {
    row.iter()
        .find(|(h, _)| h == col)
        .map(|(_, c)| c.as_str())
        .unwrap_or_else(|| panic!("no {col} in {row:?}"))
}
