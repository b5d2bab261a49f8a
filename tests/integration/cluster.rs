//! Several gateways behind HAProxy (docs/cluster.md): Redis, three nodes
//! and HAProxy on docs/cluster/haproxy.cfg, driven through the proxy only
//! (but for the admin calls that must reach one node: drain, the cluster
//! view asked of a node that does not hold the session). Skipped when
//! HAProxy or Redis is not installed, unless GATEHOUSE_REQUIRE_CLUSTER=1.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use gatehouse::client::{Error, Gateway, Session};
use gatehouse::proto::v1 as pb;
use tonic::Code;

use crate::fixtures::*;

/// Keys of the tenants every cluster test uses.
struct Keys {
    acme: String,
    free: String,
    ops: String,
    config: String,
}

/// `acme` (quota 5), `free` (no quota) and `ops` (admin).
fn tenants() -> Keys {
    let mut config = String::new();
    let mut key = |tenant: &str, quota: Option<usize>, scopes: &str| {
        let (secret, hash) = gatehouse::keys::generate().unwrap();
        config.push_str(&format!("[[tenants]]\nname = \"{tenant}\"\n"));
        if let Some(q) = quota {
            config.push_str(&format!("max_sessions = {q}\n"));
        }
        config.push_str(&format!(
            "[[tenants.keys]]\nhash = \"{hash}\"\nscopes = [{scopes}]\n"
        ));
        secret
    };
    let all = "\"sessions:open\", \"sessions:use\", \"sessions:read\", \"backends:read\"";
    let acme = key("acme", Some(5), all);
    let free = key("free", None, all);
    let ops = key("ops", None, "\"admin\"");
    Keys {
        acme,
        free,
        ops,
        config,
    }
}

async fn connect(url: &str, key: &str) -> Gateway {
    Gateway::connect(url)
        .with_key(key)
        .await
        .expect("connecting")
}

/// The three nodes, their Redis and the proxy.
struct Cluster {
    redis: Redis,
    nodes: Vec<Gatehouse>,
    proxy: HaProxy,
    keys: Keys,
}

impl Cluster {
    async fn start(cluster: &str) -> Self {
        let keys = tenants();
        let redis = Redis::start().await;
        let nodes = start_nodes(&redis, cluster, &keys.config).await;
        let proxy = HaProxy::start(&nodes.iter().collect::<Vec<_>>()).await;
        Self {
            redis,
            nodes,
            proxy,
            keys,
        }
    }

    async fn client(&self, key: &str) -> Gateway {
        connect(&self.proxy.url(), key).await
    }

    fn node(&self, id: &str) -> &Gatehouse {
        let i: usize = id
            .trim_start_matches('n')
            .parse()
            .expect("a node id n1..n3");
        &self.nodes[i - 1]
    }

    fn index(&self, id: &str) -> usize {
        id.trim_start_matches('n').parse::<usize>().expect("n1..n3") - 1
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, Error>) -> Code {
    match r {
        Err(Error::Status(s)) => s.code(),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

async fn invokes(node: &Gatehouse) -> f64 {
    node.metric("gatehouse_invoke_seconds_count", &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_stick_to_their_node_and_limits_hold_across_nodes() {
    if cluster_missing().is_some() {
        return;
    }
    let c = Cluster::start("node_lease = \"2s\"\nmax_sessions = 8").await;
    let acme = c.client(&c.keys.acme).await;

    // Opens spread over the nodes.
    let mut sessions: Vec<Session> = Vec::new();
    for _ in 0..5 {
        sessions.push(acme.open("echo").await.expect("open through the proxy"));
    }
    let nodes: HashSet<&str> = sessions.iter().map(|s| node_of(s.id())).collect();
    assert!(nodes.len() >= 2, "opens all went to {nodes:?}");

    // The tenant's quota of 5 holds across the three nodes.
    assert_eq!(code(acme.open("echo").await), Code::ResourceExhausted);

    // Every later call lands on the session's node: each node counts only
    // its own sessions' invokes.
    let before: Vec<f64> = futures::future::join_all(c.nodes.iter().map(invokes)).await;
    let mut expected = vec![0.0; 3];
    for (i, s) in sessions.iter().enumerate() {
        for _ in 0..=i {
            s.invoke("echo", "hi")
                .await
                .expect("invoke through the proxy");
            expected[c.index(node_of(s.id()))] += 1.0;
        }
    }
    let after: Vec<f64> = futures::future::join_all(c.nodes.iter().map(invokes)).await;
    let counted: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(counted, expected, "invokes counted per node");

    // Two session headers: refused by the proxy, not routed on either.
    let mut raw = acme.raw();
    let id = sessions[0].id().to_string();
    let mut request = tonic::Request::new(gatehouse::proto::v1::InvokeRequest {
        session_id: id.clone(),
        command: Some(gatehouse::proto::v1::Command {
            name: "echo".into(),
            payload: Vec::new(),
        }),
        correlation_id: String::new(),
    });
    let header = gatehouse::client::SESSION_HEADER;
    request.metadata_mut().append(header, id.parse().unwrap());
    request.metadata_mut().append(
        header,
        "n9.00000000000000000000000000000000".parse().unwrap(),
    );
    let e = raw.invoke(request).await.expect_err("a repeated header");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("repeated"), "{e:?}");

    // The cluster cap of 8 holds too: 5 of acme's and 3 more of free's.
    let free = c.client(&c.keys.free).await;
    let mut more = Vec::new();
    for _ in 0..3 {
        more.push(free.open("echo").await.expect("under the cluster cap"));
    }
    assert_eq!(code(free.open("echo").await), Code::ResourceExhausted);
    // A slot given back on any node is free everywhere (once its node's
    // release has reached Redis, a round trip after the close).
    more.pop().unwrap().close().await.unwrap();
    let again = eventually(
        "the closed session's slot to come back",
        PATIENCE,
        || async { free.open("echo").await.ok() },
    )
    .await;
    more.push(again);

    // Any node's admin view shows every node's sessions.
    let ops = c.client(&c.keys.ops).await;
    let listed: HashSet<String> = ops
        .sessions()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    for s in sessions.iter().chain(&more) {
        assert!(
            listed.contains(s.id()),
            "{} missing from {listed:?}",
            s.id()
        );
    }
    // GetSession asked of a node that does not hold the session.
    let far = sessions
        .iter()
        .find(|s| node_of(s.id()) != "n1")
        .expect("a session off n1");
    let n1 = connect(&c.nodes[0].url(), &c.keys.ops).await;
    let info = n1
        .session(far.id())
        .refresh()
        .await
        .expect("the cluster view");
    assert_eq!(info.tenant, "acme");
    assert_eq!(info.backend, "echo");
    assert_eq!(info.state(), pb::SessionState::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_node_fails_fast_and_gives_its_slots_back() {
    if cluster_missing().is_some() {
        return;
    }
    let lease = Duration::from_secs(2);
    let mut c = Cluster::start("node_lease = \"2s\"").await;
    let acme = c.client(&c.keys.acme).await;
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(acme.open("kv").await.unwrap());
    }
    for s in &sessions {
        s.invoke("put", format!(r#"{{"key":"k","value":"{}"}}"#, s.id()))
            .await
            .unwrap();
    }
    let victim = node_of(sessions[0].id()).to_string();
    let (dead, alive): (Vec<&Session>, Vec<&Session>) =
        sessions.iter().partition(|s| node_of(s.id()) == victim);
    let i = c.index(&victim);
    c.nodes[i].kill();
    let killed = Instant::now();

    // Its sessions answer UNAVAILABLE at once, not after a timeout.
    for s in &dead {
        let began = Instant::now();
        assert_eq!(
            code(s.invoke("get", r#"{"key":"k"}"#).await),
            Code::Unavailable
        );
        assert!(began.elapsed() < AT_ONCE, "took {:?}", began.elapsed());
    }
    // The others' are untouched, state and all.
    for s in &alive {
        let r = s
            .invoke("get", r#"{"key":"k"}"#)
            .await
            .expect("a living node's session");
        assert_eq!(r.text(), Some(format!("{:?}", s.id()).as_str()));
    }
    // Its slots come back within node_lease: the quota of 5 lets an open
    // through again, on a living node.
    let reopened = eventually("the dead node's slots to be free", lease * 3, || async {
        acme.open("echo").await.ok()
    })
    .await;
    assert!(
        killed.elapsed() < lease + Duration::from_secs(1),
        "slots free after {:?}",
        killed.elapsed()
    );
    assert_ne!(node_of(reopened.id()), victim);
    c.proxy.wait_status("gatehouse_open", &victim, "DOWN").await;
    let free = c.client(&c.keys.free).await;
    for _ in 0..6 {
        let s = free
            .open("echo")
            .await
            .expect("opens go to the living nodes");
        assert_ne!(node_of(s.id()), victim);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_node_takes_no_opens_and_keeps_its_sessions() {
    if cluster_missing().is_some() {
        return;
    }
    let c = Cluster::start("").await;
    let free = c.client(&c.keys.free).await;
    let mut sessions = Vec::new();
    for _ in 0..6 {
        sessions.push(free.open("echo").await.unwrap());
    }
    let draining = node_of(sessions[0].id()).to_string();
    let node = c.node(&draining);
    let out = std::process::Command::new(BIN)
        .args(["drain", "--addr", &node.url(), "--key", &c.keys.ops])
        .output()
        .expect("running gatehouse drain");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("draining: "), "{said}");
    assert_eq!(
        http_get(node.metrics_addr.unwrap(), "/readyz")
            .await
            .unwrap()
            .0,
        503
    );
    assert_eq!(node.metric("gatehouse_cluster_draining", &[]).await, 1.0);

    c.proxy
        .wait_status("gatehouse_open", &draining, "DOWN")
        .await;
    // Its sessions still answer through the proxy (its node backend checks
    // liveness, not readiness).
    assert_eq!(
        c.proxy.status(&format!("node_{draining}"), &draining).await,
        "UP"
    );
    for s in sessions.iter().filter(|s| node_of(s.id()) == draining) {
        s.invoke("echo", "still here")
            .await
            .expect("a draining node serves its sessions");
    }
    let mut landed: HashMap<String, usize> = HashMap::new();
    for _ in 0..6 {
        let s = free
            .open("echo")
            .await
            .expect("opens go to the other nodes");
        *landed.entry(node_of(s.id()).to_string()).or_default() += 1;
    }
    assert!(
        !landed.contains_key(&draining),
        "opens landed on the draining node: {landed:?}"
    );
    // Asked directly, the draining node refuses opens.
    let direct = connect(&node.url(), &c.keys.free).await;
    assert_eq!(code(direct.open("echo").await), Code::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_redis_opens_fail_and_live_sessions_go_on() {
    if cluster_missing().is_some() {
        return;
    }
    let mut c = Cluster::start("node_lease = \"2s\"").await;
    let acme = c.client(&c.keys.acme).await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(acme.open("echo").await.unwrap());
    }
    c.redis.stop();
    for _ in 0..3 {
        let began = Instant::now();
        assert_eq!(code(acme.open("echo").await), Code::Unavailable);
        assert!(
            began.elapsed() < Duration::from_secs(3),
            "took {:?}",
            began.elapsed()
        );
    }
    for s in &sessions {
        s.invoke("echo", "hi")
            .await
            .expect("live sessions keep answering");
    }
    // Back, empty: the nodes' renewals write their slots again, so the
    // quota still counts the three live sessions.
    let renewed: Vec<f64> = futures::future::join_all(c.nodes.iter().map(|n| async move {
        n.metric("gatehouse_cluster_renewals_total", &[("result", "ok")])
            .await
    }))
    .await;
    c.redis.restart().await;
    // Once every node has renewed (a third of node_lease), each has written
    // its slots back.
    for (node, before) in c.nodes.iter().zip(renewed) {
        eventually("a renewal after Redis came back", PATIENCE, || async move {
            let now = node
                .metric("gatehouse_cluster_renewals_total", &[("result", "ok")])
                .await;
            (now > before).then_some(())
        })
        .await;
    }
    let first = eventually("opens to work again", PATIENCE, || async {
        acme.open("echo").await.ok()
    })
    .await;
    let mut more = vec![first];
    let mut more_ok = 0;
    while acme.open("echo").await.map(|s| more.push(s)).is_ok() {
        more_ok += 1;
        assert!(more_ok < 5, "the quota stopped counting");
    }
    assert_eq!(
        sessions.len() + more.len(),
        5,
        "the quota of 5 held after Redis came back"
    );
}

/// Without `[cluster]` ids are plain; the header is checked against the
/// body with or without a cluster (no HAProxy or Redis needed).
#[tokio::test]
async fn the_session_header_must_agree_with_the_body() {
    let gw = Gatehouse::start("[cluster]\nnode_id = \"solo-1\"\n").await;
    let mut client = gw.client().await;
    let s = open(&mut client, "echo").await;
    assert_eq!(node_of(&s.session_id), "solo-1");
    assert_eq!(s.session_id.len(), "solo-1.".len() + 32);

    let mut request = tonic::Request::new(pb::GetSessionRequest {
        session_id: s.session_id.clone(),
    });
    request
        .metadata_mut()
        .insert("x-gatehouse-session", "solo-1.0000".parse().unwrap());
    let e = client.get_session(request).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("x-gatehouse-session"),
        "{}",
        e.message()
    );

    let mut request = tonic::Request::new(pb::GetSessionRequest {
        session_id: s.session_id.clone(),
    });
    request
        .metadata_mut()
        .insert("x-gatehouse-session", s.session_id.parse().unwrap());
    client
        .get_session(request)
        .await
        .expect("a header that agrees");
    // The Rust client sends it on its own.
    let gateway = gw.connect().await;
    gateway
        .session(s.session_id.clone())
        .invoke("echo", "x")
        .await
        .unwrap();

    let plain = Gatehouse::start("").await;
    let id = open(&mut plain.client().await, "echo").await.session_id;
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
}

/// A drain on one gateway (no HAProxy or Redis needed): NOT_SERVING at
/// once, opens refused, live sessions answer until the drain's time is up,
/// then they are closed `gateway-shutdown`.
#[tokio::test]
async fn a_drain_lets_sessions_go_on_then_closes_the_rest() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let keys = tenants();
    let gw = Gatehouse::start(format!("[cluster]\nnode_id = \"d1\"\n{}", keys.config)).await;
    let user = connect(&gw.url(), &keys.free).await;
    let kept = user.open("echo").await.unwrap();
    let ended = user.open("echo").await.unwrap();
    let ops = connect(&gw.url(), &keys.ops).await;
    let denied = user.drain(None).await;
    assert_eq!(
        code(denied),
        Code::PermissionDenied,
        "drain needs the admin scope"
    );

    let r = ops.drain(Some(Duration::from_secs(3))).await.unwrap();
    assert_eq!((r.sessions, r.already_draining), (2, false));
    let mut health = HealthClient::new(gw.channel().await);
    let status = health
        .check(HealthCheckRequest {
            service: "gatehouse.v1.Gateway".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::NotServing as i32);
    assert_eq!(code(user.open("echo").await), Code::Unavailable);
    // Sessions go on, and one that ends by itself is simply gone.
    kept.invoke("echo", "still here")
        .await
        .expect("drained sessions answer");
    ended.close().await.unwrap();
    assert!(ops.drain(None).await.unwrap().already_draining);

    // When the time is up the rest are closed as at a shutdown.
    let info = eventually("the drain to close the last session", PATIENCE, || async {
        let info = kept.refresh().await.ok()?;
        (info.state() == pb::SessionState::Closed).then_some(info)
    })
    .await;
    assert_eq!(info.close_reason(), pb::CloseReason::GatewayShutdown);
    assert_eq!(gw.metric("gatehouse_cluster_draining", &[]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_node_gives_its_slots_back_at_once() {
    if cluster_missing().is_some() {
        return;
    }
    // A lease far longer than the test: only the clean stop can free them.
    let mut c = Cluster::start("node_lease = \"5m\"").await;
    let acme = c.client(&c.keys.acme).await;
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(acme.open("echo").await.unwrap());
    }
    assert_eq!(code(acme.open("echo").await), Code::ResourceExhausted);
    let stopped = node_of(sessions[0].id()).to_string();
    let i = c.index(&stopped);
    c.nodes[i].terminate().await;
    let reopened = eventually("the stopped node's slots to be free", PATIENCE, || async {
        acme.open("echo").await.ok()
    })
    .await;
    assert_ne!(node_of(reopened.id()), stopped);
}
