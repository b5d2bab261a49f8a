//! The one place gateway errors become gRPC statuses.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::auth_error::AuthError;
use crate::backend::{FaultClass, StartError};
use crate::keystore::StoreError;
use crate::registry::{GatewayError, RETRY_AFTER};

/// Maps a refused credential to `UNAUTHENTICATED` (no usable key or
/// certificate, or two that disagree) or `PERMISSION_DENIED` (a valid
/// credential without the scope).
pub fn auth_status(error: AuthError) -> Status {
    let message = error.to_string();
    match error {
        AuthError::MissingScope { .. } => Status::permission_denied(message),
        // Every other refusal (throttled included) is a credential that
        // did not authenticate.
        _ => Status::unauthenticated(message),
    }
}

/// Maps a key store failure: a bad request is `INVALID_ARGUMENT`, an
/// unknown key `NOT_FOUND`, a switched-off store `FAILED_PRECONDITION`, and
/// the database itself failing `INTERNAL` (logged, not sent in full).
pub fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::Invalid(m) => Status::invalid_argument(m),
        StoreError::NoSuchKey(_) => Status::not_found(error.to_string()),
        StoreError::Off => Status::failed_precondition(error.to_string()),
        e => {
            tracing::error!("{e}");
            Status::internal("the key store failed; see the gateway's log")
        }
    }
}

/// Maps a gateway error to the status the spec names for it, its message
/// bounded (it may quote the request).
pub fn to_status(error: GatewayError) -> Status {
    super::input::bounded(status_of(error))
}

fn status_of(error: GatewayError) -> Status {
    let message = error.to_string();
    match error {
        GatewayError::SessionNotFound(_) | GatewayError::BackendNotFound(_) => {
            Status::not_found(message)
        }
        GatewayError::BackendNotAllowed(_) => Status::permission_denied(message),
        // A restart is under way: the same call shortly will do.
        GatewayError::NotReady {
            state: crate::registry::SessionState::Restarting,
            ..
        } => Status::with_error_details(
            Code::Unavailable,
            message,
            ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
        ),
        GatewayError::NotReady { .. } => Status::failed_precondition(message),
        GatewayError::UpgradeRefused(_) => Status::failed_precondition(message),
        GatewayError::SessionCapReached { retry_after, .. }
        | GatewayError::TenantQuotaReached { retry_after, .. }
        | GatewayError::RateLimited { retry_after, .. }
        | GatewayError::CpuThrottled(crate::backend::cpu::Throttled { retry_after, .. }) => {
            Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            )
        }
        GatewayError::SubscriberExists(_) => Status::already_exists(message),
        GatewayError::InvalidArgument(_) => Status::invalid_argument(message),
        GatewayError::OutOfRange(_) => Status::out_of_range(message),
        GatewayError::ReplyTooLarge { .. } => Status::resource_exhausted(message),
        GatewayError::Faulted(fault) => match fault.class {
            FaultClass::Deadline => Status::deadline_exceeded(message),
            FaultClass::Crashed => Status::aborted(message),
        },
        GatewayError::StartFailed(StartError::Refused(_) | StartError::RestoreFailed(_)) => {
            Status::failed_precondition(message)
        }
        GatewayError::StartFailed(StartError::Exhausted(_)) => Status::with_error_details(
            Code::ResourceExhausted,
            message,
            ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
        ),
        GatewayError::StartFailed(StartError::Failed(_)) => Status::unavailable(message),
        GatewayError::ShuttingDown
        | GatewayError::Draining
        | GatewayError::ClusterUnavailable(_) => Status::unavailable(message),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::registry::RateKind;

    #[test]
    fn over_a_rate_is_resource_exhausted_with_the_wait_in_retry_info() {
        let status = to_status(GatewayError::RateLimited {
            tenant: "a".into(),
            kind: RateKind::Requests,
            per_sec: 5.0,
            retry_after: Duration::from_millis(180),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("retry in 180ms"),
            "{}",
            status.message()
        );
        let retry = status.get_details_retry_info().expect("RetryInfo");
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(180)));
    }

    #[test]
    fn a_throttled_address_stays_unauthenticated() {
        let status = auth_status(AuthError::Throttled {
            retry_after: Duration::from_millis(900),
        });
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(status.message().contains("900ms"), "{}", status.message());
    }
}
