//! The route-status election against a faked API server, on tokio's paused
//! clock: one of two agents leads, the other takes over when the leader
//! stops renewing or releases the Lease, a 409 means another agent won, and
//! a missing permission only keeps an agent from leading.

mod k8s_fake;

use std::time::Duration;

use balancer_agent::k8s::lease::{Clock, Elector, LeaseError, LeaseOptions, Round, DEFAULT_LEASE_NAME};
use k8s_fake::FakeApi;
use tokio::{sync::watch, task::JoinHandle, time::sleep};

const NAMESPACE: &str = "balancer-system";

fn options(identity: &str) -> LeaseOptions {
    let mut o = LeaseOptions::new(NAMESPACE, identity);
    o.clock = Clock::following_tokio();
    o
}

fn elector(fake: &FakeApi, identity: &str) -> Elector {
    Elector::new(fake.client_named(identity), options(identity))
}

/// An agent's elector running on its own.
struct Contender {
    leading: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

fn contend(fake: &FakeApi, identity: &str) -> Contender {
    let (tx, leading) = watch::channel(false);
    let (stop, mut stopping) = watch::channel(false);
    let task = tokio::spawn(elector(fake, identity).run(tx, async move {
        let _ = stopping.wait_for(|s| *s).await;
    }));
    Contender { leading, stop, task }
}

impl Contender {
    fn leads(&self) -> bool {
        *self.leading.borrow()
    }
}

fn lease(fake: &FakeApi) -> serde_json::Value {
    fake.object("leases", &format!("{NAMESPACE}/{DEFAULT_LEASE_NAME}"))
        .expect("the Lease exists")
}

fn holder(fake: &FakeApi) -> Option<String> {
    lease(fake)["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

#[tokio::test(start_paused = true)]
async fn exactly_one_of_two_agents_leads_and_keeps_leading() {
    let fake = FakeApi::default();
    let a = contend(&fake, "agent-a");
    let b = contend(&fake, "agent-b");
    sleep(Duration::from_millis(100)).await;
    let first = holder(&fake).expect("someone holds the Lease");
    for _ in 0..60 {
        assert!(
            a.leads() ^ b.leads(),
            "exactly one leads (a: {}, b: {})",
            a.leads(),
            b.leads()
        );
        let leader = if a.leads() { "agent-a" } else { "agent-b" };
        assert_eq!(leader, first, "no change of leader while it renews");
        assert_eq!(holder(&fake).as_deref(), Some(leader));
        sleep(Duration::from_secs(1)).await;
    }
    let spec = &lease(&fake)["spec"];
    assert_eq!(spec["leaseDurationSeconds"], 15);
    assert_eq!(spec["leaseTransitions"], 0);
    // Renewed every 5 s over the minute, by the leader only.
    let renewals = fake
        .writes()
        .iter()
        .filter(|w| w.method == "PUT" && w.code == 200 && w.client == first)
        .count();
    assert!((11..=13).contains(&renewals), "{renewals} renewals in 60 s");
    assert!(fake.writes().iter().all(|w| w.client == first || w.method == "POST"));
}

#[tokio::test(start_paused = true)]
async fn the_other_agent_takes_over_once_the_leader_stops_renewing() {
    let fake = FakeApi::default();
    let a = contend(&fake, "agent-a");
    sleep(Duration::from_millis(100)).await;
    assert!(a.leads());
    let b = contend(&fake, "agent-b");
    sleep(Duration::from_secs(3)).await;
    assert!(!b.leads(), "the Lease is held and renewed");

    // The leader dies without releasing: b waits for the Lease to expire.
    a.task.abort();
    sleep(Duration::from_secs(9)).await;
    assert!(!b.leads(), "taken over before the Lease expired");
    assert_eq!(holder(&fake).as_deref(), Some("agent-a"));
    sleep(Duration::from_secs(12)).await;
    assert!(b.leads(), "not taken over within lease duration + one round");
    assert_eq!(holder(&fake).as_deref(), Some("agent-b"));
    assert_eq!(lease(&fake)["spec"]["leaseTransitions"], 1);
}

#[tokio::test(start_paused = true)]
async fn a_released_lease_is_taken_over_at_the_next_round() {
    let fake = FakeApi::default();
    let a = contend(&fake, "agent-a");
    sleep(Duration::from_millis(100)).await;
    let b = contend(&fake, "agent-b");
    sleep(Duration::from_secs(2)).await;
    assert!(a.leads() && !b.leads());

    a.stop.send_replace(true);
    sleep(Duration::from_millis(100)).await;
    assert!(a.task.is_finished(), "the elector ends once it has released");
    assert!(!a.leads());
    assert_eq!(holder(&fake), None, "released: holderIdentity cleared");
    // One round (5 s) rather than the 15 s of an expiry.
    sleep(Duration::from_secs(5)).await;
    assert!(b.leads());
    assert_eq!(holder(&fake).as_deref(), Some("agent-b"));
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_cannot_renew_stops_leading_before_the_lease_expires() {
    let fake = FakeApi::default();
    let a = contend(&fake, "agent-a");
    sleep(Duration::from_millis(100)).await;
    assert!(a.leads());
    sleep(Duration::from_secs(2)).await;
    fake.set_down(true);
    // Renewals fail: it goes on leading for duration - renew_every (10 s)
    // after its last renewal, then steps down, before anyone could take
    // the Lease over (15 s).
    sleep(Duration::from_secs(4)).await;
    assert!(a.leads(), "a failed renewal is not the end of leadership");
    sleep(Duration::from_secs(8)).await;
    assert!(!a.leads(), "still leading 12 s into the outage");
    fake.set_down(false);
    sleep(Duration::from_secs(6)).await;
    assert!(a.leads(), "renews again once the API is back");
}

#[tokio::test(start_paused = true)]
async fn a_conflict_means_another_agent_won() {
    let fake = FakeApi::default();
    let mut a = elector(&fake, "agent-a");
    let mut b = elector(&fake, "agent-b");

    // Both see no Lease and create it at once: one create wins.
    let (ra, rb) = tokio::join!(a.round(), b.round());
    let (ra, rb) = (ra.expect("round a"), rb.expect("round b"));
    assert!(
        (ra == Round::Leading) ^ (rb == Round::Leading),
        "one leader: {ra:?} {rb:?}"
    );
    let (mut leader, mut other, other_name) = if ra == Round::Leading {
        (a, b, "agent-b")
    } else {
        (b, a, "agent-a")
    };
    let leader_name = holder(&fake).expect("held");
    assert_eq!(other.round().await.expect("round"), Round::HeldBy(leader_name.clone()));

    // The leader goes quiet; the Lease expires. Another writer gets in
    // between the other agent's read and write: it does not lead.
    sleep(Duration::from_secs(16)).await;
    fake.conflict_next("leases");
    assert_eq!(other.round().await.expect("round"), Round::Lost);
    assert_eq!(holder(&fake), Some(leader_name.clone()));
    // Its next round reads again and takes the expired Lease.
    assert_eq!(other.round().await.expect("round"), Round::Leading);
    assert_eq!(holder(&fake).as_deref(), Some(other_name));
    assert_eq!(
        leader.round().await.expect("round"),
        Round::HeldBy(other_name.to_owned())
    );
    // A write based on a stale read is refused by its resourceVersion.
    let refused = fake.writes().iter().filter(|w| w.code == 409).count();
    assert!(refused >= 2, "the lost create and the injected conflict: {refused}");
}

#[tokio::test(start_paused = true)]
async fn without_lease_permission_an_agent_never_leads_and_keeps_trying() {
    let fake = FakeApi::default();
    fake.forbid("leases");
    let mut e = elector(&fake, "agent-a");
    let err = e.round().await.expect_err("forbidden");
    assert!(matches!(err, LeaseError::Forbidden { verb: "get", .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(
            "forbidden: the agent's service account may not get Lease balancer-system/balancer-agent-status"
        ),
        "{err}"
    );

    let a = contend(&fake, "agent-a");
    sleep(Duration::from_secs(30)).await;
    assert!(!a.leads());
    assert!(!a.task.is_finished(), "a missing permission does not end the election");
    fake.allow("leases");
    sleep(Duration::from_secs(6)).await;
    assert!(a.leads(), "leads once the permission is granted");
}
