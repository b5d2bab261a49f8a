//! The operator pack against a real Prometheus: it scrapes a real gateway
//! (TLS, `[cluster]` over Redis, `gatehouse bench` load, a reload, a fault
//! storm) with deploy/prometheus/gatehouse.rules.yml loaded; every
//! recording rule and every query of deploy/grafana/gatehouse.json must
//! return data, and the storm must fire its alert.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::fixtures::*;

/// How long a rule may take to have data: a few scrapes and evaluations
/// (1s each) after the load starts, on a loaded machine.
const SETTLE: Duration = Duration::from_secs(60);

/// Recording rules over metrics the gateway does not export yet, with the
/// metric. The test fails once the metric appears, so an exemption cannot
/// outlive its reason. (None now: the CPU scheduler's metrics landed.)
const COMING: &[(&str, &str)] = &[];

fn deploy(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The recording rules' names, in file order.
fn recording_rules(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(|n| n.trim().to_string())
        .collect()
}

/// Every panel query of the dashboard, with its template variables set to
/// "all" and Grafana's rate interval to one that fits a 1s scrape.
fn dashboard_queries(dashboard: &str) -> Vec<String> {
    let json: serde_json::Value = serde_json::from_str(dashboard).expect("the dashboard is JSON");
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                    out.push(expr.clone());
                }
                map.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&json["panels"], &mut out);
    out.into_iter()
        .map(|e| {
            e.replace("$backend", ".*")
                .replace("$tenant", ".*")
                .replace("$__rate_interval", "1m")
        })
        .collect()
}

/// The rules with every `for:` cut to 1s: the test cannot wait minutes
/// for an alert, and the expressions stay as shipped.
fn quick_alerts(rules: &str) -> String {
    rules
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for:") {
            Some(_) => format!("{}for: 1s", &l[..l.len() - l.trim_start().len()]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `gatehouse bench` against the gateway, killed on drop.
struct Bench(Child);

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `promql` has a sample with a real number; panics with what
/// it returned otherwise.
async fn has_data(prometheus: &Prometheus, what: &str, promql: &str) {
    let limit = tokio::time::Instant::now() + SETTLE;
    loop {
        let samples = prometheus.query(promql).await;
        if samples.iter().any(|(_, v)| v.is_finite()) {
            return;
        }
        if tokio::time::Instant::now() >= limit {
            panic!("{what} `{promql}` has no data after {SETTLE:?}: {samples:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn every_rule_and_panel_has_data_and_a_fault_storm_fires_its_alert() {
    if prometheus_missing().is_some() || cluster_missing().is_some() {
        return;
    }
    let redis = Redis::start().await;
    let ca = Ca::new("gatehouse test CA");
    let server = ca.server("gateway");
    let config = format!(
        "[server]\nsweep_interval = \"50ms\"\n\
         [server.tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         [cluster]\nnode_id = \"p1\"\nredis = \"{}\"\nnode_lease = \"1s\"\n\
         [[backends]]\nname = \"echo\"\nmodule = \"builtin:echo\"\n\
         [[backends]]\nname = \"chaos\"\nmodule = \"builtin:chaos\"\n\
         [backends.restart]\npolicy = \"on-fault\"\nmax_restarts = 1\nperiod = \"1h\"\nbackoff = \"10ms\"\n",
        redis.url()
    );
    let mut gw = Gatehouse::builder(config)
        .file("server.pem", server.cert.clone())
        .file("server.key", server.key.clone())
        .file("ca.pem", ca.pem())
        .tls_client(TlsClient::trusting(&ca))
        .start()
        .await;
    let metrics_addr = gw.metrics_addr.expect("a metrics port");
    let exported = gw.metrics().await;

    let rules = deploy("prometheus/gatehouse.rules.yml");
    let scrape = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - gatehouse.rules.yml\n\
         scrape_configs:\n  - job_name: gatehouse\n    scheme: https\n    \
         tls_config:\n      ca_file: ca.pem\n    \
         static_configs:\n      - targets: [\"{metrics_addr}\"]\n"
    );
    let prometheus = Prometheus::start(
        &scrape,
        &[
            ("gatehouse.rules.yml", quick_alerts(&rules)),
            ("ca.pem", ca.pem()),
        ],
    )
    .await;

    // Load for the whole test: sessions opened, used and closed.
    let bench = Bench(
        Command::new(BIN)
            .args(["bench", "--mode", "churn", "-c", "2", "--duration", "300s"])
            .arg("--addr")
            .arg(gw.url())
            .arg("--ca-cert")
            .arg(gw.dir().join("ca.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning gatehouse bench"),
    );
    gw.sighup();
    gw.wait_metric("gatehouse_reloads_total", &[("result", "ok")], 1.0)
        .await;

    // The fault storm: every chaos session traps, restarts once, traps
    // again and is faulted for good by the restart limit: 200 faults. The
    // alert wants more than 0.1 faults/s over 5 minutes (over 30).
    let mut c = gw.client().await;
    for _ in 0..100 {
        let s = open(&mut c, "chaos").await;
        for _ in 0..3 {
            let _ = try_invoke(&mut c, &s.session_id, "trap", b"").await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    assert!(
        gw.metric("gatehouse_faults_total", &[("code", "restart-limit")])
            .await
            > 0.0,
        "the storm reached the restart limit"
    );

    for name in recording_rules(&rules) {
        if let Some((_, metric)) = COMING.iter().find(|(rule, _)| *rule == name) {
            assert!(
                !exported.contains(metric),
                "{metric} is exported now: take {name} off COMING"
            );
            eprintln!("not checked yet: {name} ({metric} is not exported yet)");
            continue;
        }
        has_data(&prometheus, "recording rule", &name).await;
    }
    let queries = dashboard_queries(&deploy("grafana/gatehouse.json"));
    assert!(queries.len() >= 15, "the dashboard's queries: {queries:?}");
    for q in &queries {
        has_data(&prometheus, "dashboard query", q).await;
    }

    let firing = |alert: &'static str, backend: Option<&'static str>| {
        let prometheus = &prometheus;
        async move {
            let json = prometheus.api("/api/v1/alerts").await?;
            json["data"]["alerts"]
                .as_array()?
                .iter()
                .any(|a| {
                    a["labels"]["alertname"] == alert
                        && a["state"] == "firing"
                        && backend.is_none_or(|b| a["labels"]["backend"] == b)
                })
                .then_some(())
        }
    };
    eventually("GatehouseFaultRateHigh firing for chaos", SETTLE, || {
        firing("GatehouseFaultRateHigh", Some("chaos"))
    })
    .await;
    eventually(
        "GatehouseRestartLimitReached firing for chaos",
        SETTLE,
        || firing("GatehouseRestartLimitReached", Some("chaos")),
    )
    .await;
    // A healthy gateway raises nothing else.
    for quiet in [
        "GatehouseDown",
        "GatehouseReloadFailing",
        "GatehouseNodeLeaseLost",
        "GatehouseRedisUnreachable",
        "GatehouseCertificateExpiringSoon",
    ] {
        assert!(
            firing(quiet, None).await.is_none(),
            "{quiet} fires on a healthy gateway"
        );
    }
    drop(bench);
    let _ = gw.terminate().await;
}
