//! Fuzz targets for what a client sends once its request is decoded: open
//! requests with any names, maps and durations, and session ids of any
//! shape. The registry answers each with a session or a typed error,
//! never a panic, and a failed open leaves nothing behind.

use std::time::Duration;

use proptest::prelude::*;

use super::fixtures::*;
use crate::config::{MAX_DURATION, SessionPolicy, parse_duration};
use crate::fuzzing::config_with;
use crate::registry::{GatewayError, OpenRequest};

/// Strings a client may send: empty, ordinary, odd bytes, or huge.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("fake".to_string()),
        "[a-z0-9@._-]{1,20}",
        ".{0,40}",
        (1usize..100_000).prop_map(|n| "x".repeat(n)),
    ]
}

/// A requested duration of any value the API lets through (it refuses
/// only negative ones; api/fuzz.rs covers that conversion).
fn requested() -> impl Strategy<Value = Option<Duration>> {
    proptest::option::of(prop_oneof![
        Just(Duration::ZERO),
        (0u64..100_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        Just(Duration::MAX),
    ])
}

/// A config duration: anything the file's syntax accepts, up to the
/// largest it lets through.
fn policy_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (1u64..3600).prop_map(Duration::from_secs),
        Just(MAX_DURATION),
        "[1-9][0-9]{0,19}(ms|s|m|h)"
            .prop_filter_map("not a config duration", |s| parse_duration(&s).ok())
            .prop_filter("zero", |d| !d.is_zero()),
    ]
}

fn request() -> impl Strategy<Value = OpenRequest> {
    (
        name(),
        name(),
        name(),
        requested(),
        requested(),
        prop_oneof![
            proptest::collection::btree_map(name(), name(), 0..4),
            // A huge map, as a client may send one.
            (0usize..20_000).prop_map(|n| (0..n).map(|i| (i.to_string(), String::new())).collect()),
        ],
    )
        .prop_map(
            |(backend, session_name, correlation, command_timeout, lease, config)| OpenRequest {
                backend,
                client_session_name: session_name,
                client_correlation_id: correlation,
                command_timeout,
                lease,
                config,
            },
        )
}

proptest! {
    #![proptest_config(config_with(64))]

    /// Any open request, under any policy the config allows: a READY
    /// session for the backend, or a typed refusal that leaves no session
    /// or slot behind; and the session can be used, renewed and closed.
    #[test]
    fn any_open_request_is_answered(
        open in request(),
        lease in policy_duration(),
        max_lease in policy_duration(),
        command_timeout in policy_duration(),
        max_command_timeout in policy_duration(),
    ) {
        let policy = SessionPolicy {
            lease,
            max_lease: max_lease.max(lease),
            command_timeout,
            max_command_timeout: max_command_timeout.max(command_timeout),
            ..SessionPolicy::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let f = fixture_with(4, policy, Script::default());
            let backend = open.backend.clone();
            match f.registry.open(&me(), open).await {
                Ok(s) => {
                    // The name, or a pin of its one version ("fake@1",
                    // "fake@sha256:0...").
                    prop_assert!(
                        backend == "fake" || ["fake@1", "fake@sha256:0"].iter().any(|p| backend.starts_with(p)),
                        "{backend:?}"
                    );
                    f.registry.invoke(&me(), &s.id, cmd(), None).await.unwrap();
                    f.registry.renew(&me(), &s.id).unwrap();
                    f.clock.advance(Duration::from_secs(3600));
                    f.registry.sweep().await;
                    f.registry.close(&me(), &s.id).await.unwrap();
                }
                Err(e) => {
                    prop_assert!(
                        matches!(e, GatewayError::BackendNotFound(_) | GatewayError::InvalidArgument(_)),
                        "{e:?}"
                    );
                    prop_assert_eq!(f.registry.open_count(), 0);
                    prop_assert!(f.registry.list(&me()).is_empty());
                }
            }
            Ok(())
        })?;
    }

    /// Any `backend@version` a client writes resolves to a loaded version
    /// that matches it, or to nothing; never a panic, never another
    /// backend's version.
    #[test]
    fn any_backend_pin_resolves_to_a_matching_version_or_nothing(
        name in prop_oneof![Just("fake".to_string()), name()],
        pin in prop_oneof![
            Just(None),
            name().prop_map(Some),
            "sha256:[0-9a-fA-F]{0,70}".prop_map(Some),
            Just(Some("1".to_string())),
        ],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _in_runtime = rt.enter();
        let f = fixture();
        let written = match &pin {
            Some(p) => format!("{name}@{p}"),
            None => name.clone(),
        };
        if let Ok((resolved, version)) = f.registry.catalog().resolve(&written) {
            prop_assert_eq!(resolved.as_str(), "fake");
            prop_assert_eq!(version.info.name.as_str(), "fake");
            match pin.as_deref() {
                None => {}
                Some(p) => match p.strip_prefix("sha256:") {
                    Some(prefix) => prop_assert!(
                        !prefix.is_empty() && "0".starts_with(&prefix.to_ascii_lowercase()),
                        "{written:?}"
                    ),
                    None => prop_assert_eq!(p, "1"),
                },
            }
        }
    }

    /// Any session id that was not handed out is NOT_FOUND, for every call
    /// that takes one.
    #[test]
    fn unknown_session_ids_are_not_found(id in name()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let f = fixture();
            let real = f.registry.open(&me(), open_req()).await.unwrap();
            prop_assume!(*id != *real.id);
            let not_found = |r: Result<(), GatewayError>| matches!(r, Err(GatewayError::SessionNotFound(_)));
            prop_assert!(not_found(f.registry.get(&me(), &id).map(drop)));
            prop_assert!(not_found(f.registry.renew(&me(), &id).map(drop)));
            prop_assert!(not_found(f.registry.invoke(&me(), &id, cmd(), None).await.map(drop)));
            prop_assert!(not_found(f.registry.subscribe(&me(), &id, None).await.map(drop)));
            prop_assert!(not_found(f.registry.close(&me(), &id).await.map(drop)));
            Ok(())
        })?;
    }
}
