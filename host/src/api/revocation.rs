//! A credential checked again while its call runs: a call in flight ends
//! `UNAUTHENTICATED` (or `PERMISSION_DENIED`) and an open response stream
//! ends with that status in its trailers once the key that authorized it
//! is revoked, expires, or a reload removes its key, tenant or scope.
//!
//! Nothing polls: the check runs again at each reload, at each change of
//! the key store's table (at once for a change made by this gateway,
//! within the store's upkeep interval for one made by another process
//! sharing the file) and at the key's expiry. Ending the stream drops it,
//! which frees the session's subscriber slot.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;

use super::auth_error::AuthError;
use super::status::auth_status;
use crate::transport::PeerIdentity;

/// What authorized a call, to authorize it again.
#[derive(Debug, Clone)]
pub(super) struct Credential {
    /// The `authorization` header as sent.
    pub authorization: Option<http::HeaderValue>,
    /// The connection's client certificate.
    pub cert: Option<std::sync::Arc<PeerIdentity>>,
    /// The RPC.
    pub method: String,
    /// The tenant it resolved to.
    pub tenant: String,
    /// The key's expiry (Unix seconds), for key store keys.
    pub expires: Option<i64>,
}

/// Resolves when the credential no longer authorizes its call.
pub(super) type Revoked = Pin<Box<dyn Future<Output = AuthError> + Send>>;

/// Until the wall clock reaches `at` (Unix seconds).
async fn until_unix(at: i64) {
    let now = crate::keystore::now();
    let secs = u64::try_from(at.saturating_sub(now)).unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    // Whole seconds: the store compares `now >= expires`.
    while crate::keystore::now() < at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for `rx` to change; forever once its sender is gone.
async fn changed(rx: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    if let Some(r) = rx
        && r.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// Resolves with the refusal `credential` would get now, once it would
/// get one; see the module docs. It is checked again at each change of
/// `reloads` (the authenticator's reloads) and of `store` (the key store's
/// table), and at the key's expiry, with `resolve`: the tenant the
/// credential names now, or its refusal. The authenticator passes itself
/// as `resolve`, so this module needs nothing of auth.rs.
pub(super) fn revoked(
    credential: Credential,
    reloads: tokio::sync::watch::Receiver<u64>,
    store: Option<tokio::sync::watch::Receiver<u64>>,
    resolve: impl Fn(&http::HeaderMap, Option<&PeerIdentity>, &str) -> Result<String, AuthError>
    + Send
    + 'static,
) -> Revoked {
    let mut reloads = Some(reloads);
    let mut store = store;
    Box::pin(async move {
        loop {
            let expiry = async {
                match credential.expires {
                    Some(at) => until_unix(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = changed(&mut reloads) => {}
                () = changed(&mut store) => {}
                () = expiry => {}
            }
            let mut headers = http::HeaderMap::new();
            if let Some(v) = &credential.authorization {
                headers.insert(http::header::AUTHORIZATION, v.clone());
            }
            match resolve(&headers, credential.cert.as_deref(), &credential.method) {
                Err(e) => return e,
                // The same credential, moved to another tenant by a
                // reload, is not the one that authorized the call.
                Ok(tenant) if tenant != credential.tenant => {
                    return AuthError::UnknownKey;
                }
                Ok(_) => {}
            }
        }
    })
}

/// A call's response future, ended by its credential's revocation; its
/// response body is then watched the same way.
pub struct Revocable<F> {
    pub(super) inner: F,
    pub(super) revoked: Option<Revoked>,
}

impl<F, E> Future for Revocable<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(revoked) = self.revoked.as_mut()
            && let Poll::Ready(e) = revoked.as_mut().poll(cx)
        {
            log_revoked(&e, "call");
            return Poll::Ready(Ok(auth_status(e).into_http()));
        }
        let response = match Pin::new(&mut self.inner).poll(cx) {
            Poll::Ready(Ok(r)) => r,
            other => return other,
        };
        let revoked = self.revoked.take();
        Poll::Ready(Ok(response.map(|body| match revoked {
            Some(revoked) => tonic::body::Body::new(RevocableBody {
                inner: Some(body),
                revoked,
            }),
            None => body,
        })))
    }
}

fn log_revoked(e: &AuthError, what: &str) {
    tracing::info!("{what} ended: its credential no longer authorizes it: {e}");
}

/// A response body that ends with the credential's refusal in its
/// trailers once it is revoked.
struct RevocableBody {
    /// `None` once ended: dropping it at once gives back what the stream
    /// held (the session's subscriber slot).
    inner: Option<tonic::body::Body>,
    revoked: Revoked,
}

impl Body for RevocableBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.inner.is_none() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(e) = self.revoked.as_mut().poll(cx) {
            log_revoked(&e, "stream");
            self.inner = None;
            let mut trailers = http::HeaderMap::new();
            // A status that cannot be written is still an end.
            let _ = auth_status(e).add_header(&mut trailers);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let polled = match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_frame(cx),
            None => return Poll::Ready(None),
        };
        // After the body's own end (or its trailers) nothing more is sent.
        match &polled {
            Poll::Ready(None) => self.inner = None,
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => self.inner = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
