//! `balancerctl` against a running admin server: every object in table and
//! JSON form (JSON parsed and checked), and its one-line errors.

#![expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]

mod support_admin;
mod support_ctl;

use balancer_agent::api;
use support_admin::*;
use support_ctl::run as ctl;

fn ok(fx: &Fixture, args: &[&str]) -> String {
    let out = ctl(&fx.addr.to_string(), args);
    assert!(
        out.status.success(),
        "balancerctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn json<T: serde::de::DeserializeOwned>(fx: &Fixture, args: &[&str]) -> T {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let compact = ok(fx, &all);
    assert_eq!(compact.trim().lines().count(), 1, "-j is one line: {compact}");
    all[0] = "-p";
    let pretty = ok(fx, &all);
    assert!(
        pretty.lines().count() > 1 || pretty.trim() == "[]",
        "-p is indented: {pretty}"
    );
    let a: serde_json::Value = serde_json::from_str(&compact).expect("valid JSON");
    let b: serde_json::Value = serde_json::from_str(&pretty).expect("valid JSON");
    // Same document in both forms, but for what moves with the clock.
    assert_eq!(timeless(a.clone()), timeless(b));
    serde_json::from_value(a).expect("the admin API's document")
}

fn timeless(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Array(a) => Value::Array(a.into_iter().map(timeless).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .filter(|(k, _)| !["age_seconds", "uptime_seconds", "calls_per_second"].contains(&k.as_str()))
                .map(|(k, v)| (k, timeless(v)))
                .collect(),
        ),
        other => other,
    }
}

/// Rows of a table, split into cells at the header's column starts (and
/// checked to be aligned: every cell starts at its header's column).
fn table(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut lines = text.lines();
    let header = lines.next().expect("a header line");
    let mut starts = vec![0];
    let b = header.as_bytes();
    for i in 2..b.len() {
        if b[i] != b' ' && b[i - 1] == b' ' && b[i - 2] == b' ' {
            starts.push(i);
        }
    }
    let cells = |line: &str| -> Vec<String> {
        let chars: Vec<char> = line.chars().collect();
        starts
            .iter()
            .enumerate()
            .map(|(n, &s)| {
                let end = starts.get(n + 1).copied().unwrap_or(chars.len()).min(chars.len());
                if n > 0 && s < chars.len() {
                    assert!(chars[s - 1] == ' ', "cell not aligned under its header in {line:?}");
                }
                chars
                    .get(s.min(chars.len())..end)
                    .map(|c| c.iter().collect::<String>())
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            })
            .collect()
    };
    let head = cells(header);
    let rows = lines.filter(|l| !l.trim().is_empty()).map(cells).collect();
    (head, rows)
}

fn col<'a>(head: &[String], row: &'a [String], name: &str) -> &'a str {
    let i = head
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {head:?}"));
    &row[i]
}

#[test]
fn service_show() {
    let fx = start(true);
    let (head, rows) = table(&ok(&fx, &["service", "show"]));
    assert_eq!(head[0], "NAME");
    assert_eq!(rows.len(), 2);
    let g = &rows[0];
    assert_eq!(col(&head, g, "NAME"), "greeter");
    assert_eq!(col(&head, g, "VIPS"), "10.96.0.10:8000");
    assert_eq!(col(&head, g, "POLICY"), "round-robin");
    assert_eq!(col(&head, g, "ENDPOINTS"), "1/2"); // one ejected
                                                   // Every call the service received, those the agent answered itself
                                                   // (no endpoint could take them) included, and those among the errors.
    assert_eq!(col(&head, g, "CALLS"), RECEIVED.to_string());
    assert_eq!(
        col(&head, g, "ERRORS"),
        (UNAVAILABLE_B + RESETS_B + NO_ENDPOINT).to_string()
    );
    assert_eq!(col(&head, g, "NO-ENDPOINT"), NO_ENDPOINT.to_string());
    assert_eq!(col(&head, &rows[1], "NAME"), "default/echo");
    assert_eq!(col(&head, &rows[1], "NO-ENDPOINT"), "0");

    let services: Vec<api::Service> = json(&fx, &["service", "show"]);
    assert_eq!(services, vec![greeter(), echo()]);
    // Bare object means show, like bpftool.
    assert_eq!(ok(&fx, &["service"]), ok(&fx, &["service", "show"]));

    let detail = ok(&fx, &["service", "show", "greeter"]);
    assert!(detail.contains("Policy:     round-robin"), "{detail}");
    assert!(detail.contains("version=v1:90 version=v2:10  300ms"), "{detail}");
    assert!(detail.contains("127.0.0.1:50052"), "{detail}");
    assert!(
        detail.contains("Locality:   PreferClose (endpoints: 1 zone, 1 other)"),
        "{detail}"
    );
    assert!(detail.contains(&format!("No endpoint: {NO_ENDPOINT}")), "{detail}");
    assert!(
        detail.contains(
            "Filters:\n  canary:\n    request: set x-tenant=acme, remove x-debug\n    mirror: greeter-shadow 10%\n"
        ),
        "{detail}"
    );
    assert!(
        detail.contains("Mirrored:   7 sent (1 unanswered), 2 dropped"),
        "{detail}"
    );
    let one: api::Service = json(&fx, &["service", "show", "default/echo"]);
    assert_eq!(one, echo());
    let detail = ok(&fx, &["service", "show", "default/echo"]);
    assert!(
        detail.contains("Policy:     ring-hash (header x-user-id; without it round-robin)"),
        "{detail}"
    );
    assert!(
        detail.contains(
            "Faults:     abort UNAVAILABLE (\"fault injected\") to 5% of calls (so far 0 delayed, 3 aborted)"
        ),
        "{detail}"
    );
}

#[test]
fn endpoint_show() {
    let fx = start(true);
    let (head, rows) = table(&ok(&fx, &["endpoint", "show", "greeter"]));
    assert_eq!(rows.len(), 2);
    assert_eq!(col(&head, &rows[0], "ADDRESS"), "127.0.0.1:50051");
    assert_eq!(col(&head, &rows[0], "CALLS"), OK_A.to_string());
    assert_eq!(col(&head, &rows[0], "EJECTED"), "no");
    assert_eq!(col(&head, &rows[1], "EJECTED"), "yes (1)");
    assert_eq!(col(&head, &rows[1], "IN-FLIGHT"), "3");
    assert_eq!(col(&head, &rows[1], "ERRORS"), "3 (14:2,reset:1)");
    assert_eq!(col(&head, &rows[1], "LABELS"), "version=v2");
    // The service prefers close endpoints: each endpoint's tier.
    assert_eq!(col(&head, &rows[0], "LOCALITY"), "zone");
    assert_eq!(col(&head, &rows[1], "LOCALITY"), "other");
    let eps: Vec<api::Endpoint> = json(&fx, &["endpoint", "show", "greeter"]);
    assert_eq!(eps, greeter().endpoints);
}

#[test]
fn pod_and_conn_show() {
    let fx = start(true);
    let (head, rows) = table(&ok(&fx, &["pod", "show"]));
    assert_eq!(col(&head, &rows[0], "POD"), "default/client-0");
    assert_eq!(col(&head, &rows[0], "CGROUP ID"), "4242");
    let pods: Vec<api::Pod> = json(&fx, &["pod", "show"]);
    assert_eq!(pods[0].cgroup, "/sys/fs/cgroup/kubepods/pod-client-0");

    let (head, rows) = table(&ok(&fx, &["conn", "show"]));
    assert_eq!(rows.len(), 2);
    assert_eq!(col(&head, &rows[0], "PEER"), "10.0.0.2:40000");
    assert_eq!(col(&head, &rows[0], "POD"), "default/client-0");
    assert_eq!(col(&head, &rows[0], "ORIGINAL DST"), "10.96.0.10:8000");
    assert_eq!(col(&head, &rows[0], "STREAMS"), "3");
    assert_eq!(col(&head, &rows[1], "PROTO"), "tcp");
    let conns: Vec<api::Conn> = json(&fx, &["conn", "show"]);
    assert_eq!(conns.iter().map(|c| c.open_streams).collect::<Vec<_>>(), [3, 0]);
}

#[test]
fn prog_and_map_show_and_dump() {
    let fx = start(true);
    let (head, rows) = table(&ok(&fx, &["prog", "show"]));
    assert_eq!(rows.len(), 5);
    assert_eq!(col(&head, &rows[0], "NAME"), "connect4");
    assert_eq!(col(&head, &rows[0], "REDIRECTED"), "42");
    // connect6 has its own row and counters.
    let c6 = rows
        .iter()
        .find(|r| col(&head, r, "NAME") == "connect6")
        .expect("connect6 row");
    assert_eq!(col(&head, c6, "REDIRECTED"), CONNECT6_REDIRECTED.to_string());
    let sk_msg = rows
        .iter()
        .find(|r| col(&head, r, "NAME") == "sk_msg")
        .expect("sk_msg row");
    assert_eq!(col(&head, sk_msg, "BYTES"), SK_MSG_BYTES.to_string());
    assert_eq!(col(&head, c6, "BYTES"), "-");
    assert_eq!(col(&head, &rows[0], "ATTACHED TO"), "cgroup /sys/fs/cgroup/test");
    let one: Vec<api::Program> = json(&fx, &["prog", "show", "13"]);
    assert_eq!(one.len(), 1);
    assert_eq!((one[0].name.as_str(), one[0].run_count), ("sk_msg", Some(113)));

    let (head, rows) = table(&ok(&fx, &["map", "show"]));
    assert_eq!(col(&head, &rows[0], "NAME"), "SERVICES");
    assert_eq!(col(&head, &rows[0], "MAX ENTRIES"), "16384");
    let maps: Vec<api::Map> = json(&fx, &["map", "show"]);
    assert_eq!(maps.len(), 2);

    let dump = ok(&fx, &["map", "dump", "SERVICES"]);
    let (head, rows) = table(&dump);
    assert_eq!(col(&head, &rows[0], "KEY"), "10.96.0.10:8000");
    assert!(dump.ends_with("Found 1 element\n"), "{dump}");
    let d: api::MapDump = json(&fx, &["map", "dump", "SERVICES"]);
    assert_eq!(d.entries[0].value, "flags 0x0");
}

#[test]
fn stats_and_status() {
    let fx = start(true);
    let (head, rows) = table(&ok(&fx, &["stats"]));
    let g = rows.iter().find(|r| r[0] == "greeter").expect("greeter row");
    assert_eq!(col(&head, g, "CALLS"), RECEIVED.to_string());
    assert_eq!(col(&head, g, "NO-ENDPOINT"), NO_ENDPOINT.to_string());
    assert!(col(&head, g, "P50").ends_with("ms"), "{g:?}");
    let json_rows: Vec<serde_json::Value> = json(&fx, &["stats"]);
    let g = json_rows.iter().find(|r| r["service"] == "greeter").unwrap();
    assert_eq!(g["no_endpoint"], NO_ENDPOINT);
    assert_eq!(g["errors"], UNAVAILABLE_B + RESETS_B + NO_ENDPOINT);
    let p99 = g["p99_seconds"].as_f64().unwrap();
    assert!((0.025..=0.05).contains(&p99), "{p99}");
    // --watch: interval rates; nothing happened in the interval.
    let out = ok(&fx, &["-j", "stats", "--watch", "--count", "1"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap();
    let g = rows.iter().find(|r| r["service"] == "greeter").unwrap();
    assert_eq!(g["calls"], 0);
    assert!(g["p50_seconds"].is_null());

    let status = ok(&fx, &["status"]);
    assert!(
        status.contains("Ready:      yes") && status.contains("Reloads:    3 ok, 1 failed"),
        "{status}"
    );
    let s: api::Status = json(&fx, &["status"]);
    assert!(s.ready);
}

#[test]
fn errors_are_one_line_with_a_nonzero_exit() {
    // Nothing listens on a port we just released.
    let addr = balancer_testing::port::free_port().unwrap().to_string();
    let out = ctl(&addr, &["service", "show"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&addr) && err.contains("is balancer-agent running?"),
        "{err}"
    );
    // The cause, once: the kernel's answer to the connect.
    assert_eq!(err.matches("Connection refused").count(), 1, "{err}");

    let out = ctl(&addr, &["frobnicate"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        err.trim(),
        "balancerctl: unknown object or command `frobnicate` (see balancerctl --help)"
    );

    let fx = start(false);
    let out = ctl(&fx.addr.to_string(), &["prog", "show"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("without eBPF"), "{err}");

    let out = ctl(&fx.addr.to_string(), &["service", "show", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no service named `nope`"));

    let out = ctl(&fx.addr.to_string(), &["--kernel", "service", "show"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kernel applies to `prog` and `map` only"));
}

#[test]
fn kernel_reads_need_root() {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let out = ctl("127.0.0.1:1", &["-j", "--kernel", "prog", "show"]);
    if root {
        // Reads the kernel directly (no agent at 127.0.0.1:1): a JSON list,
        // possibly empty when no balancer programs are loaded.
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let progs: Vec<api::Program> = serde_json::from_slice(&out.stdout).unwrap();
        assert!(progs.iter().all(|p| !p.prog_type.is_empty()));
        let out = ctl("127.0.0.1:1", &["-j", "--kernel", "map", "show"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let _: Vec<api::Map> = serde_json::from_slice(&out.stdout).unwrap();
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1));
        assert!(err.contains("needs root"), "{err}");
    }
}

#[test]
fn help_and_completions() {
    for args in [
        &["--help"][..],
        &["prog", "--help"],
        &["map", "dump", "--help"],
        &["stats", "--help"],
        &["endpoint", "show", "--help"],
    ] {
        let out = ctl("127.0.0.1:1", args);
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"), "{args:?}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = ctl("127.0.0.1:1", &["completion", shell]);
        assert!(out.status.success());
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("balancerctl") && script.contains("endpoint"), "{shell}");
    }
}
