//! Backend versions across reloads: a session keeps the version it opened
//! on, new opens get the new one, pins reach any loaded version, and a
//! retired version goes when its last session ends or its retire_after
//! passes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::fixtures::*;
use crate::backend::BackendInfo;
use crate::backend::{Fault, FaultCode};
use crate::config::{BackendKind, Rollout, SessionPolicy};
use crate::registry::{
    BackendEntry, CloseReason, GatewayError, OpenRequest, SessionState, VersionState,
};

/// The `fake` backend at `version` with content `digest`.
fn fake(
    f: &Fixture,
    version: &str,
    digest: &str,
    retire_after: Option<Duration>,
) -> BTreeMap<String, BackendEntry> {
    fake_rollout(f, version, digest, retire_after, None)
}

/// [`fake`] with a rollout.
fn fake_rollout(
    f: &Fixture,
    version: &str,
    digest: &str,
    retire_after: Option<Duration>,
    rollout: Option<Rollout>,
) -> BTreeMap<String, BackendEntry> {
    let mut backends = BTreeMap::new();
    backends.insert(
        "fake".to_string(),
        BackendEntry {
            backend: Arc::new(FakeBackend {
                info: BackendInfo {
                    name: "fake".into(),
                    kind: BackendKind::Wasm,
                    version: version.into(),
                    digest: digest.into(),
                    description: String::new(),
                },
                script: Arc::clone(&f.script),
            }),
            policy: policy(),
            config: BTreeMap::new(),
            retire_after,
            rollout,
            recovery: Default::default(),
        },
    );
    backends
}

fn open_on(backend: &str) -> OpenRequest {
    OpenRequest {
        backend: backend.into(),
        ..OpenRequest::default()
    }
}

/// (version, state, live sessions) of every listed version.
fn listed(f: &Fixture) -> Vec<(String, VersionState, usize)> {
    f.registry
        .backends_for(&me())
        .into_iter()
        .map(|(v, s)| (v.info.version.clone(), s, v.live_sessions()))
        .collect()
}

#[tokio::test]
async fn sessions_keep_their_version_and_new_opens_get_the_new_one() {
    let f = fixture();
    let old = f.registry.open(&me(), open_req()).await.unwrap();
    assert_eq!(
        (
            old.backend().version.as_str(),
            old.backend().digest.as_str()
        ),
        ("1", "sha256:0")
    );

    // The same loaded backend again is no change at all.
    let (_, current) = f.registry.catalog().resolve("fake").unwrap();
    let mut again = fake(&f, "1", "sha256:0", None);
    if let Some(entry) = again.get_mut("fake") {
        entry.backend = Arc::clone(&current.entry.backend);
    }
    let same = f.registry.install_backends(again);
    assert_eq!(same.unchanged, ["fake"]);
    assert_eq!(listed(&f), [("1".into(), VersionState::Current, 1)]);

    let changes = f
        .registry
        .install_backends(fake(&f, "2", "sha256:2222", None));
    assert_eq!(changes.updated, ["fake"]);
    assert_eq!(
        listed(&f),
        [
            ("2".into(), VersionState::Current, 0),
            ("1".into(), VersionState::Retiring, 1)
        ]
    );
    let new = f.registry.open(&me(), open_req()).await.unwrap();
    assert_eq!(new.backend().version, "2");
    // The old session still runs, on its own version.
    f.registry
        .invoke(&me(), &old.id, cmd(), None)
        .await
        .unwrap();
    assert_eq!(old.backend().version, "1");

    // Pins reach any loaded version; an unknown one is NOT_FOUND.
    let pinned = f.registry.open(&me(), open_on("fake@1")).await.unwrap();
    assert_eq!(pinned.backend().version, "1");
    let by_digest = f
        .registry
        .open(&me(), open_on("fake@sha256:22"))
        .await
        .unwrap();
    assert_eq!(by_digest.backend().version, "2");
    for missing in ["fake@3", "fake@sha256:99", "fake@sha256:", "nope@1"] {
        assert!(
            matches!(
                f.registry.open(&me(), open_on(missing)).await,
                Err(GatewayError::BackendNotFound(_))
            ),
            "{missing}"
        );
    }
    f.registry.close(&me(), &by_digest.id).await.unwrap();
    f.registry.close(&me(), &new.id).await.unwrap();

    // The retired version goes with its last session.
    f.registry.close(&me(), &old.id).await.unwrap();
    f.registry.sweep().await;
    assert_eq!(
        listed(&f).len(),
        2,
        "the pinned session still holds version 1"
    );
    f.registry.close(&me(), &pinned.id).await.unwrap();
    f.registry.sweep().await;
    assert_eq!(listed(&f), [("2".into(), VersionState::Current, 0)]);
}

#[tokio::test]
async fn a_removed_backend_refuses_opens_and_keeps_its_sessions() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    let changes = f.registry.install_backends(BTreeMap::new());
    assert_eq!(changes.removed, ["fake"]);
    assert!(matches!(
        f.registry.open(&me(), open_req()).await,
        Err(GatewayError::BackendNotFound(_))
    ));
    f.registry.invoke(&me(), &s.id, cmd(), None).await.unwrap();
    assert_eq!(listed(&f), [("1".into(), VersionState::Retiring, 1)]);
    f.registry.close(&me(), &s.id).await.unwrap();
    f.registry.sweep().await;
    assert!(listed(&f).is_empty());
    // Added back, it is a new backend.
    let changes = f.registry.install_backends(fake(&f, "1", "sha256:0", None));
    assert_eq!(changes.added, ["fake"]);
}

#[tokio::test]
async fn retire_after_closes_the_sessions_left_on_a_retired_version() {
    let f = fixture_with(
        4,
        SessionPolicy {
            lease: Duration::from_secs(3600),
            ..policy()
        },
        Script::default(),
    );
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    f.registry
        .install_backends(fake(&f, "1", "sha256:0", Some(Duration::from_secs(30))));
    // A new backend with a retire_after: the running one retires without
    // one of its own.
    f.registry
        .install_backends(fake(&f, "2", "sha256:2", Some(Duration::from_secs(30))));
    let v2 = f.registry.open(&me(), open_req()).await.unwrap();
    f.registry
        .install_backends(fake(&f, "3", "sha256:3", Some(Duration::from_secs(30))));
    f.clock.advance(Duration::from_secs(29));
    f.registry.sweep().await;
    assert_eq!(v2.state(), SessionState::Ready);
    f.clock.advance(Duration::from_secs(2));
    f.registry.sweep().await;
    assert_eq!(v2.state(), SessionState::Closed);
    assert_eq!(
        v2.snapshot().close_reason,
        Some(CloseReason::BackendRetired)
    );
    // Version 1 had no retire_after: its session stays.
    assert_eq!(s.state(), SessionState::Ready);
}

#[tokio::test]
async fn a_canary_takes_its_share_rolls_back_on_faults_and_can_be_promoted() {
    let f = fixture_with(64, policy(), Script::default());
    let rollout = Some(Rollout {
        percent: 50,
        max_faults: 1,
        window: Duration::from_secs(60),
    });
    let changes = f
        .registry
        .install_backends(fake_rollout(&f, "2", "sha256:2", None, rollout));
    assert_eq!(changes.updated, ["fake"]);
    assert_eq!(
        listed(&f),
        [
            ("1".into(), VersionState::Current, 0),
            ("2".into(), VersionState::Canary, 0)
        ]
    );
    let mut on_canary = Vec::new();
    for _ in 0..40 {
        let s = f.registry.open(&me(), open_req()).await.unwrap();
        if s.backend().version == "2" {
            on_canary.push(s);
        } else {
            f.registry.close(&me(), &s.id).await.unwrap();
        }
    }
    assert!(
        on_canary.len() > 5 && on_canary.len() < 35,
        "{} of 40",
        on_canary.len()
    );
    // Two faults is more than max_faults = 1: rolled back, by itself.
    for s in &on_canary[..2] {
        f.registry.fault_session(
            s,
            Fault::crashed(
                FaultCode::Trap(crate::backend::TrapCode::Unreachable),
                "boom",
            ),
        );
    }
    assert_eq!(
        f.metrics
            .rollbacks
            .get_or_create(&crate::metrics::BackendLabel {
                backend: "fake".into()
            })
            .get(),
        1
    );
    for _ in 0..20 {
        let s = f.registry.open(&me(), open_req()).await.unwrap();
        assert_eq!(s.backend().version, "1");
        f.registry.close(&me(), &s.id).await.unwrap();
    }
    // Its remaining sessions run on, retiring.
    f.registry
        .invoke(&me(), &on_canary[2].id, cmd(), None)
        .await
        .unwrap();
    assert!(
        f.registry.end_rollout("fake", true).is_err(),
        "nothing to promote"
    );

    // A new canary, promoted by hand: every open gets it, its sessions stay.
    f.registry
        .install_backends(fake_rollout(&f, "3", "sha256:3", None, rollout));
    f.registry.end_rollout("fake", true).unwrap();
    for _ in 0..10 {
        let s = f.registry.open(&me(), open_req()).await.unwrap();
        assert_eq!(s.backend().version, "3");
        f.registry.close(&me(), &s.id).await.unwrap();
    }
    // And one rolled back by hand.
    f.registry
        .install_backends(fake_rollout(&f, "4", "sha256:4", None, rollout));
    f.registry.end_rollout("fake", false).unwrap();
    for _ in 0..10 {
        let s = f.registry.open(&me(), open_req()).await.unwrap();
        assert_eq!(s.backend().version, "3");
        f.registry.close(&me(), &s.id).await.unwrap();
    }
    assert!(f.registry.end_rollout("fake", false).is_err());
}

#[tokio::test]
async fn a_faulted_session_restarted_by_hand_keeps_its_version() {
    let f = fixture();
    f.registry.install_backends(fake(&f, "1", "sha256:0", None));
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    // Version 2 is built from the same bytes: the same digest.
    f.registry.install_backends(fake(&f, "2", "sha256:0", None));
    f.registry.fault_session(
        &s,
        Fault::crashed(
            FaultCode::Trap(crate::backend::TrapCode::Unreachable),
            "boom",
        ),
    );
    assert_eq!(s.state(), SessionState::Faulted);
    f.registry.restart(&me(), &s.id, false).await.unwrap();
    assert_eq!(s.state(), SessionState::Ready);
    assert_eq!(s.backend().version, "1");
    // It runs on the version it reports, not on the current one.
    assert_eq!(
        listed(&f),
        [
            ("2".into(), VersionState::Current, 0),
            ("1".into(), VersionState::Retiring, 1)
        ]
    );
}
