//! The running agent in Kubernetes mode (against the fake API server,
//! started as its DaemonSet starts it) tells the cluster what keeps it from
//! serving its node: a Warning Event on the Node object when the node
//! cannot run balancer (no cgroup v2) or when another connect program runs
//! before balancer's. Needs root: `BALANCER_REQUIRE_PRIVILEGED=1 cargo test
//! -p balancer-tests --test node_events -- --test-threads=1`.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant},
};

use balancer_tests::{
    apiserver::{FakeApiOptions, FakeApiServer},
    built,
    container::{CgroupView, HostCgroupMount},
    foreign::ForeignConnect4,
    node_agent::{NodeAgent, NodeAgentOptions},
    privileged::serial_or_skip,
    topology::Topology,
};
use serde_json::Value;

const NODE: &str = "node-events";
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 8000);

fn agent_env(api: &FakeApiServer, topo: &Topology) -> Vec<(String, String)> {
    vec![
        ("KUBECONFIG".to_owned(), api.kubeconfig().display().to_string()),
        ("NODE_NAME".to_owned(), NODE.to_owned()),
        ("HOST_IP".to_owned(), topo.node.ip.to_string()),
    ]
}

/// Waits for the Events with `reason`, then a little longer to see that no
/// more come.
fn node_events(api: &FakeApiServer, agent: &NodeAgent, reason: &str) -> Vec<Value> {
    let start = Instant::now();
    let with_reason = || -> Vec<Value> {
        api.events()
            .expect("events")
            .into_iter()
            .filter(|e| e["reason"] == reason)
            .collect()
    };
    while with_reason().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no {reason} Event: {:#?}\nagent log:\n{}",
            api.events(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    with_reason()
}

fn assert_on_the_node(e: &Value) {
    assert_eq!(e["type"], "Warning", "{e}");
    assert_eq!(e["regarding"]["kind"], "Node", "{e}");
    assert_eq!(e["regarding"]["name"], NODE, "{e}");
    assert_eq!(e["metadata"]["namespace"], "default", "{e}");
}

#[test]
fn a_foreign_connect_program_first_is_a_warning_event_on_the_node() {
    let Some(_serial) = serial_or_skip("a_foreign_connect_program_first_is_a_warning_event_on_the_node") else {
        return;
    };
    let topo = Topology::new(1).expect("topology");
    let init = topo.root_cgroup.child("init").expect("init container cgroup");
    let host_dir = PathBuf::from(format!("/run/{}", balancer_tests::unique_name("balancer-test-cg")));
    let host = HostCgroupMount::create(&built("balancer-agent"), host_dir, &init).expect("mount-cgroup2");
    drop(init);
    let attach = &topo.pods[0].cgroup;
    let _foreign = ForeignConnect4::attach(
        attach.path(),
        "cil_sock4_conn",
        VIP,
        SocketAddrV4::new(topo.node.ip, 50080),
    )
    .expect("foreign program");
    let api = FakeApiServer::spawn(&FakeApiOptions::default(), Some(&topo.node.netns)).expect("fake API server");
    let mut env = agent_env(&api, &topo);
    env.push(("BALANCER_CGROUP_ROOT".to_owned(), host.dir().display().to_string()));
    env.push((
        "BALANCER_ATTACH_CGROUP".to_owned(),
        host.view_of(attach.path()).display().to_string(),
    ));
    let opts = NodeAgentOptions {
        config: None,
        args: Vec::new(),
        env,
        view: CgroupView::Namespaced,
        read_only: vec![host.dir().to_owned()],
    };
    let mut agent =
        NodeAgent::start(&built("balancer-agent"), &topo.node.netns, &topo.agent_cgroup, &opts).expect("start agent");
    let status = agent.wait(true, Duration::from_secs(30)).expect("settled");
    assert!(!status.ready, "{status:?}");

    let events = node_events(&api, &agent, "ForeignConnectProgram");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_on_the_node(&events[0]);
    let note = events[0]["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("cil_sock4_conn") && note.contains("runs before"),
        "{note}"
    );

    agent.sigterm().expect("SIGTERM");
    assert_eq!(agent.wait_exit(Duration::from_secs(30)).expect("exit"), Some(0));
}

#[test]
fn a_node_without_cgroup_v2_is_a_warning_event_on_the_node() {
    let Some(_serial) = serial_or_skip("a_node_without_cgroup_v2_is_a_warning_event_on_the_node") else {
        return;
    };
    let topo = Topology::new(1).expect("topology");
    let api = FakeApiServer::spawn(&FakeApiOptions::default(), Some(&topo.node.netns)).expect("fake API server");
    let opts = NodeAgentOptions {
        config: None,
        args: Vec::new(),
        env: agent_env(&api, &topo),
        view: CgroupView::NoCgroup2,
        read_only: Vec::new(),
    };
    let mut agent =
        NodeAgent::start(&built("balancer-agent"), &topo.node.netns, &topo.agent_cgroup, &opts).expect("start agent");
    let status = agent.wait(true, Duration::from_secs(30)).expect("settled");
    assert!(!status.ready, "{status:?}");

    let events = node_events(&api, &agent, "NodeUnsupported");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_on_the_node(&events[0]);
    let note = events[0]["note"].as_str().unwrap_or_default();
    assert!(note.contains("cgroup v2"), "{note}");

    agent.sigterm().expect("SIGTERM");
    assert_eq!(agent.wait_exit(Duration::from_secs(30)).expect("exit"), Some(0));
}
