//! The scale bench's harness on a small cluster (50 Services), so that
//! `cargo xtask bench --scale` keeps working: every phase completes and
//! its numbers are sane. Needs root.

use std::time::Duration;

use balancer_tests::{
    bin_path,
    privileged::serial_or_skip,
    scale::{self, report, Bins, ScaleOptions, Shape},
};

#[test]
fn the_scale_bench_measures_a_small_cluster() {
    let Some(_serial) = serial_or_skip("the_scale_bench_measures_a_small_cluster") else {
        return;
    };
    let dir = bin_path("balancer-scale-bench");
    let bins = Bins::in_dir(dir.parent().expect("bin dir")).unwrap_or_else(|e| {
        panic!("{e}: build every binary first (`cargo build --workspace --bins`; `cargo xtask test` does)")
    });
    let opts = ScaleOptions {
        window: Duration::from_secs(2),
        moves: 3,
        ..ScaleOptions::quick(bins)
    };
    let r = scale::run(Shape::plain(50), &opts).expect("the bench runs");

    let ready = r.ready_secs.expect("the agent became ready");
    assert!(ready > 0.0 && ready < 60.0, "{r:?}");
    assert!(r.rss_after_sync_kb > 1024, "{r:?}");
    assert!(r.peak_after_sync_kb >= r.rss_after_sync_kb, "{r:?}");
    assert!(r.idle.secs >= 2.0 && r.idle.cpu_secs >= 0.0, "{r:?}");
    let churn = r.churn.as_ref().expect("the churn ran");
    assert!(churn.changes >= 10, "{churn:?}");
    assert!(churn.window.rss_max_kb >= churn.window.rss_min_kb && churn.window.rss_min_kb > 0);
    // Every move of the greeter's endpoints reached the pod's calls.
    assert_eq!(r.moves_idle.ms.len(), 3, "{:?}", r.moves_idle);
    assert!(
        r.moves_idle.ms.iter().all(|ms| *ms > 0.0 && *ms < 10_000.0),
        "{:?}",
        r.moves_idle
    );
    let under_churn = r.moves_churn.as_ref().expect("moves under churn");
    assert_eq!(under_churn.ms.len(), 3, "{under_churn:?}");
    // The VIP count of the model and of the kernel map.
    assert_eq!(r.vips_cluster, 50);
    assert_eq!(r.vips_model, Some(50), "{r:?}");
    assert_eq!(r.vips_map, Some(50), "{r:?}");
    assert_eq!(r.greeter_in_map, Some(true));
    assert!(r.greeter_calls.is_some_and(|n| n > 0), "{r:?}");

    let md = report::section(std::slice::from_ref(&r), &report::Meta::default());
    assert!(md.contains("| | S = 50 (491 endpoints) |"), "{md}");
}
