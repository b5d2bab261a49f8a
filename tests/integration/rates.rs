//! Budgets through the real binary: tenants' request and open rates
//! (`RESOURCE_EXHAUSTED` with `RetryInfo`), local mode's `default` tenant
//! taking them too, and failed authentications throttled per peer address.
//! In every test a bystander session must keep answering.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use gatehouse::client::BearerKey;
use gatehouse::keys;
use gatehouse::proto::v1 as pb;
use gatehouse::proto::v1::gateway_client::GatewayClient;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::fixtures::*;

/// A key made for a test: the secret and its config entry.
struct Key {
    secret: String,
    entry: String,
}

fn new_key() -> Key {
    let (secret, hash) = keys::generate().unwrap();
    Key {
        secret,
        entry: format!(
            "[[tenants.keys]]\nhash = \"{hash}\"\nscopes = [\"sessions:open\", \"sessions:use\", \"sessions:read\", \"backends:read\"]\n"
        ),
    }
}

/// A channel to the gateway from `from`, a loopback address of the
/// test's choosing: the gateway sees it as the peer address.
async fn channel_from(gw: &Gatehouse, from: &str) -> Channel {
    let from: IpAddr = from.parse().unwrap();
    Channel::from_shared(gw.url())
        .unwrap()
        .local_address(Some(from))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting from {from}: {e}"))
}

/// A generated client sending `key`.
fn keyed(channel: Channel, key: &str) -> Client {
    GatewayClient::with_interceptor(channel, BearerKey::new(Some(key)).unwrap())
}

/// A config with the echo backend and `tenants` appended.
fn config(server: &[&str], tenants: &str) -> String {
    let toml = server
        .iter()
        .fold(Toml::new(), |t, line| t.server(line))
        .backend("echo", "builtin:echo");
    format!("{}{tenants}", toml.render())
}

/// A bystander: a session of its own on its own connection, which must
/// answer its next count.
struct Bystander {
    client: Client,
    session: String,
    count: u64,
}

impl Bystander {
    async fn open(client: Client) -> Self {
        let mut client = client;
        let session = open(&mut client, "echo").await.session_id;
        let mut b = Self {
            client,
            session,
            count: 0,
        };
        b.answers().await;
        b
    }

    /// One call, which must succeed with the next count; returns how long
    /// it took.
    async fn answers(&mut self) -> Duration {
        let began = Instant::now();
        let r = bounded(
            "the bystander's Invoke",
            self.client
                .invoke(invoke_request(&self.session, "count", "")),
        )
        .await
        .unwrap_or_else(|s| panic!("the bystander was refused: {s:?}"))
        .into_inner();
        self.count += 1;
        assert_eq!(r.payload, self.count.to_string().as_bytes());
        began.elapsed()
    }
}

fn retry_delay(status: &tonic::Status) -> Duration {
    status
        .get_details_retry_info()
        .unwrap_or_else(|| panic!("no RetryInfo on {status:?}"))
        .retry_delay
        .unwrap_or_else(|| panic!("RetryInfo without a delay on {status:?}"))
}

#[tokio::test]
async fn a_tenant_flooding_past_its_request_rate_gets_retry_info_while_another_is_unaffected() {
    let (flood, calm) = (new_key(), new_key());
    let gw = Gatehouse::start(config(
        &[],
        &format!(
            "[[tenants]]\nname = \"flood\"\nmax_requests_per_sec = 0.01\nrequests_burst = 3\n{}[[tenants]]\nname = \"calm\"\n{}",
            flood.entry, calm.entry
        ),
    ))
    .await;
    let mut bystander = Bystander::open(keyed(gw.channel().await, &calm.secret)).await;
    let mut flooder = keyed(gw.channel().await, &flood.secret);

    // One token every 100 s after a burst of 3: no refill during the test,
    // so what is admitted is counted exactly, whatever the machine's speed.
    let (mut admitted, mut refused) = (0u32, 0u32);
    for _ in 0..40 {
        match bounded(
            "the flooder's ListBackends",
            flooder.list_backends(pb::ListBackendsRequest {}),
        )
        .await
        {
            Ok(_) => admitted += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    status.message().contains("max_requests_per_sec"),
                    "{}",
                    status.message()
                );
                // At 0.01 a second, the next token is at most 100 s off.
                let delay = retry_delay(&status);
                assert!(
                    delay > Duration::ZERO && delay <= Duration::from_secs(100),
                    "{delay:?}"
                );
                refused += 1;
            }
        }
        bystander.answers().await;
    }
    assert_eq!((admitted, refused), (3, 37), "the burst, then nothing");
    let text = gw.metrics().await;
    let limited = |tenant| {
        metric_sum(
            &text,
            "gatehouse_rate_limited_total",
            &[("tenant", tenant), ("kind", "requests")],
        )
    };
    assert_eq!(limited("flood"), f64::from(refused));
    assert_eq!(limited("calm"), 0.0);
    // That waiting as RetryInfo says is enough is checked on a hand-moved
    // clock (rate.rs, registry/tests/rates.rs), not by sleeping here.
    bystander.answers().await;
}

#[tokio::test]
async fn opens_past_the_open_rate_are_refused_without_taking_a_slot() {
    let (a, b) = (new_key(), new_key());
    let gw = Gatehouse::start(config(
        &[],
        &format!(
            "[[tenants]]\nname = \"a\"\nmax_opens_per_sec = 0.2\n{}[[tenants]]\nname = \"b\"\n{}",
            a.entry, b.entry
        ),
    ))
    .await;
    let mut bystander = Bystander::open(keyed(gw.channel().await, &b.secret)).await;
    let mut ca = keyed(gw.channel().await, &a.secret);
    let first = open(&mut ca, "echo").await;
    let status = try_open(&mut ca, open_request("echo"))
        .await
        .expect_err("a second open within five seconds");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("max_opens_per_sec"),
        "{}",
        status.message()
    );
    let delay = retry_delay(&status);
    assert!(
        // One open every five seconds, less the time since the first.
        delay > Duration::from_secs(1) && delay <= Duration::from_secs(5),
        "{delay:?}"
    );
    // The refused open took no slot; the tenant's other calls go on.
    let text = gw.metrics().await;
    assert_eq!(
        metric_sum(&text, "gatehouse_tenant_open_sessions", &[("tenant", "a")]),
        1.0
    );
    assert_eq!(
        metric_sum(
            &text,
            "gatehouse_rate_limited_total",
            &[("tenant", "a"), ("kind", "opens")]
        ),
        1.0
    );
    bounded(
        "Invoke on the first session",
        ca.invoke(invoke_request(&first.session_id, "count", "")),
    )
    .await
    .expect("other calls are not opens");
    // Another tenant opens as it likes.
    for _ in 0..3 {
        open(&mut bystander.client, "echo").await;
    }
    bystander.answers().await;
}

#[tokio::test]
async fn local_mode_default_tenant_takes_the_rates_too() {
    let gw = Gatehouse::start(config(
        &[],
        "[[tenants]]\nname = \"default\"\nmax_requests_per_sec = 0.2\nrequests_burst = 4\n",
    ))
    .await;
    // The bystander's open and first count take two of the four tokens.
    let mut bystander = Bystander::open(gw.client().await).await;
    bystander.answers().await;
    let mut c = gw.client().await;
    bounded("ListBackends", c.list_backends(pb::ListBackendsRequest {}))
        .await
        .expect("the last token of the burst");
    let status = bounded("ListBackends", c.list_backends(pb::ListBackendsRequest {}))
        .await
        .expect_err("past the burst");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("\"default\""),
        "{}",
        status.message()
    );
    assert!(retry_delay(&status) > Duration::from_secs(1));
    // Health is not the tenant's: it keeps answering.
    let mut health = tonic_health::pb::health_client::HealthClient::new(gw.channel().await);
    let serving = bounded(
        "the health check",
        health.check(tonic_health::pb::HealthCheckRequest {
            service: "gatehouse.v1.Gateway".into(),
        }),
    )
    .await
    .expect("health answers");
    assert_eq!(serving.into_inner().status, 1, "SERVING");
}

#[tokio::test]
async fn a_burst_of_bad_keys_does_not_slow_good_ones() {
    let good = new_key();
    let gw = Gatehouse::start(config(
        // One more try every ten seconds after a burst of five: the
        // attacker stays throttled for the whole test.
        &["max_auth_failures_per_sec = 0.1", "auth_failures_burst = 5"],
        &format!("[[tenants]]\nname = \"a\"\n{}", good.entry),
    ))
    .await;
    let mut bystander =
        Bystander::open(keyed(channel_from(&gw, "127.0.0.1").await, &good.secret)).await;

    // Four tasks of bad keys from another address, as fast as they go.
    let attacker = channel_from(&gw, "127.0.0.2").await;
    const TASKS: usize = 4;
    const CALLS: usize = 100;
    let attacks: Vec<_> = (0..TASKS)
        .map(|t| {
            let channel = attacker.clone();
            tokio::spawn(async move {
                for i in 0..CALLS {
                    let bad = format!("ghk_guess{t}x{i}");
                    let mut c = keyed(channel.clone(), &bad);
                    let status = bounded(
                        "a bad key's ListBackends",
                        c.list_backends(pb::ListBackendsRequest {}),
                    )
                    .await
                    .expect_err("a bad key is refused");
                    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                }
            })
        })
        .collect();

    // Meanwhile the good key keeps answering, promptly.
    let mut latencies = Vec::new();
    while !attacks.iter().all(|a| a.is_finished()) {
        latencies.push(bystander.answers().await);
    }
    for a in attacks {
        a.await.expect("an attack task");
    }
    latencies.push(bystander.answers().await);
    latencies.sort();
    let slowest = *latencies.last().unwrap();
    assert!(
        slowest < Duration::from_secs(2),
        "a good call took {slowest:?} during the flood (median {:?})",
        latencies[latencies.len() / 2]
    );

    // Most bad keys were refused without being looked at.
    let text = gw.metrics().await;
    let checked = metric_sum(&text, "gatehouse_auth_failures_total", &[]);
    let unchecked = metric_sum(&text, "gatehouse_auth_throttled_total", &[]);
    assert_eq!(checked + unchecked, (TASKS * CALLS) as f64, "{text}");
    // The burst, a refill or two, and a few that raced past the check.
    assert!((5.0..=20.0).contains(&checked), "{checked} checked");

    // The throttled address is refused even with the good key (that is
    // what bounds guessing), with a message saying why.
    let mut from_attacker = keyed(attacker.clone(), &good.secret);
    let status = bounded(
        "the good key from the throttled address",
        from_attacker.list_backends(pb::ListBackendsRequest {}),
    )
    .await
    .expect_err("throttled");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("too many failed authentications"),
        "{}",
        status.message()
    );

    // Logged a few times with counts, never a key.
    let log = gw.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("127.0.0.2")).collect();
    assert!(
        (1..=4).contains(&lines.len()),
        "{} log lines about the attacker:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("failing repeatedly") && l.contains("refused=")),
        "{}",
        lines.join("\n")
    );
    assert!(!log.contains("ghk_guess"), "a key in the log:\n{log}");
    assert!(!log.contains(&good.secret), "a key in the log");
    bystander.answers().await;
}
