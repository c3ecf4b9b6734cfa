//! Warning Events on the agent's Node for what keeps it from serving the
//! node until an operator acts (the node cannot run balancer, another
//! connect program runs first), as the agent's conditions change, against a
//! faked API server: one Event per distinct problem, not one per periodic
//! check.

mod k8s_fake;

use std::time::Duration;

use balancer_agent::{
    health::Health,
    k8s::{self, route_status::CONTROLLER_NAME, K8sOptions},
};
use k8s_fake::FakeApi;
use serde_json::Value;
use tokio::time::{sleep, timeout};

const NODE: &str = "node-a";
const WAIT: Duration = Duration::from_secs(5);

fn with_reason(fake: &FakeApi, reason: &str) -> Vec<Value> {
    fake.events().into_iter().filter(|e| e["reason"] == reason).collect()
}

async fn until_events(fake: &FakeApi, reason: &str, n: usize) -> Vec<Value> {
    timeout(WAIT, async {
        loop {
            let found = with_reason(fake, reason);
            if found.len() >= n {
                return found;
            }
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not {n} {reason} Events within {WAIT:?}: {:#?}", fake.events()))
}

#[tokio::test]
async fn each_lasting_node_problem_is_one_warning_event_on_the_node() {
    let fake = FakeApi::default();
    let mut opts = K8sOptions::new(NODE, "/nonexistent");
    opts.instance = Some("balancer-agent-x7k2p".to_owned());
    let health = Health::new(true);
    let task = tokio::spawn(k8s::node_events::report(
        k8s::Events::new(fake.client(), opts.reporter()),
        NODE.to_owned(),
        health.problems(),
    ));

    // The main loop finds a foreign program at start and again at every
    // check: one Event.
    let cilium = "connect4 program cil_sock4_conn (id 71)".to_owned();
    for _ in 0..3 {
        health.set_foreign(vec![cilium.clone()], vec![]);
        sleep(Duration::from_millis(30)).await;
    }
    let foreign = until_events(&fake, k8s::FOREIGN_CONNECT_PROGRAM_REASON, 1).await;
    let e = &foreign[0];
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["regarding"]["kind"], "Node");
    assert_eq!(e["regarding"]["apiVersion"], "v1");
    assert_eq!(e["regarding"]["name"], NODE);
    assert_eq!(e["reportingController"], CONTROLLER_NAME);
    assert_eq!(e["reportingInstance"], "balancer-agent-x7k2p");
    let note = e["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("cil_sock4_conn") && note.contains("runs before"),
        "{note}"
    );

    // A program that runs after balancer's is no problem.
    health.set_foreign(vec![cilium.clone()], vec!["connect4 program other (id 72)".to_owned()]);
    // A second one that runs first: one more Event, for it alone.
    let calico = "connect6 program calico_connect (id 73)".to_owned();
    health.set_foreign(vec![cilium.clone(), calico.clone()], vec![]);
    let foreign = until_events(&fake, k8s::FOREIGN_CONNECT_PROGRAM_REASON, 2).await;
    assert!(
        foreign[1]["note"]
            .as_str()
            .unwrap_or_default()
            .contains("calico_connect"),
        "{foreign:#?}"
    );

    health.set_unsupported("no cgroup v2 hierarchy is mounted (cgroup v1 or hybrid node)".to_owned());
    let unsupported = until_events(&fake, k8s::NODE_UNSUPPORTED_REASON, 1).await;
    assert_eq!(unsupported[0]["regarding"]["name"], NODE);
    assert!(
        unsupported[0]["note"]
            .as_str()
            .unwrap_or_default()
            .contains("no cgroup v2 hierarchy"),
        "{unsupported:#?}"
    );

    // Nothing repeats while the problems last.
    for _ in 0..3 {
        health.set_foreign(vec![cilium.clone(), calico.clone()], vec![]);
    }
    sleep(Duration::from_millis(300)).await;
    assert_eq!(with_reason(&fake, k8s::FOREIGN_CONNECT_PROGRAM_REASON).len(), 2);
    assert_eq!(with_reason(&fake, k8s::NODE_UNSUPPORTED_REASON).len(), 1);

    // Gone, then back: told again.
    health.set_foreign(vec![], vec![]);
    sleep(Duration::from_millis(50)).await;
    health.set_foreign(vec![cilium], vec![]);
    until_events(&fake, k8s::FOREIGN_CONNECT_PROGRAM_REASON, 3).await;

    // The agent's conditions gone (it stops): the reporter ends.
    drop(health);
    timeout(WAIT, task).await.expect("ends").expect("no panic");
}
