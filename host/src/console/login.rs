//! Signing in and out.
//!
//! A failed sign-in is a failed authentication like a gRPC call's: counted
//! in `gatehouse_auth_failures_total` and throttled per address by the
//! same [`FailureThrottle`](crate::api::FailureThrottle) (one budget of
//! guesses for both), logged without the key, and audited
//! (`console.sign_in_failed`, the address as its target).

use std::net::IpAddr;
use std::time::Duration;

use axum::Form;
use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;

use super::Console;
use super::guard::{ClientIp, CsrfForm, Posted, St};
use super::signin::{
    LOGIN_CSRF_COOKIE, SESSION_COOKIE, SIGN_IN_LIFETIME, cookie, random_token, same_token,
    set_cookie,
};
use crate::api::{AuthError, FailureThrottle, Via};
use crate::keystore::{Actor, AuditEntry};

/// `/console`: the sessions page.
pub async fn home() -> Redirect {
    Redirect::to("/console/sessions")
}

/// The sign-in form, with a fresh double-submit CSRF cookie.
pub async fn login_form(State(c): St, headers: HeaderMap) -> Response {
    if c.admin(&headers).is_some() {
        return Redirect::to("/console/sessions").into_response();
    }
    login_page(&c, StatusCode::OK, None)
}

fn login_page(c: &Console, status: StatusCode, error: Option<&str>) -> Response {
    let Some(csrf) = random_token() else {
        return c.message(StatusCode::INTERNAL_SERVER_ERROR, "Error", "No randomness.");
    };
    let mut r = c.templates.page(
        status,
        "login.html",
        json!({ "csrf": csrf, "error": error, "signed_in": false }),
    );
    let cookie = set_cookie(LOGIN_CSRF_COOKIE, &csrf, Duration::from_secs(3600), c.tls);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// The sign-in form's fields.
#[derive(Deserialize)]
pub struct LoginForm {
    csrf: String,
    key: String,
}

/// Signs in with an admin key.
pub async fn login(
    State(c): St,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    let form = match form {
        Ok(Form(form)) if !expected.is_empty() && same_token(&form.csrf, expected) => form,
        _ => {
            return login_page(
                &c,
                StatusCode::FORBIDDEN,
                Some("The sign-in form expired or was not sent by this console. Try again."),
            );
        }
    };
    // Local mode has no credentials to guess, as for gRPC calls.
    let throttle = c.throttle.as_deref().filter(|_| !c.auth.is_local());
    if let Some(t) = throttle
        && let Err(wait) = t.admit(ip)
    {
        let secs = wait.as_secs_f64().ceil().max(1.0);
        let mut r = login_page(
            &c,
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "Too many failed sign-ins from this address: the key was not checked. Try again in {secs}s."
            )),
        );
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let caller = match c.check_key(&form.key) {
        Ok(caller) => caller,
        Err(e) => {
            sign_in_failed(&c, throttle, ip, &e).await;
            return login_page(
                &c,
                StatusCode::UNAUTHORIZED,
                Some("That is not an admin key of this gateway (or it was revoked or expired)."),
            );
        }
    };
    let Some(token) = c.sign_ins.start(form.key.trim().to_string()) else {
        return c.message(StatusCode::INTERNAL_SERVER_ERROR, "Error", "No randomness.");
    };
    c.keys
        .record(
            &caller,
            Via::Console,
            AuditEntry {
                action: "console.sign_in",
                target: String::new(),
                detail: String::new(),
            },
        )
        .await;
    let mut r = Redirect::to("/console/sessions").into_response();
    for value in [
        set_cookie(SESSION_COOKIE, &token, SIGN_IN_LIFETIME, c.tls),
        set_cookie(LOGIN_CSRF_COOKIE, "", Duration::ZERO, c.tls),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

/// Counts, logs and audits a refused sign-in; the key is never written.
async fn sign_in_failed(
    c: &Console,
    throttle: Option<&FailureThrottle>,
    ip: Option<IpAddr>,
    error: &AuthError,
) {
    // Counted (and summed up in the log once per interval per address) by
    // the throttle; each failure is also one audit line, which names the
    // address and why, never the key.
    if let Some(t) = throttle
        && error.is_unauthenticated()
    {
        t.failed(ip, "console sign-in", error);
    }
    let actor = Actor {
        label: "anonymous".into(),
        tenant: String::new(),
        via: Via::Console.as_str(),
    };
    let entry = AuditEntry {
        action: "console.sign_in_failed",
        target: ip.map_or_else(|| "unknown address".into(), |ip| ip.to_string()),
        detail: error.to_string(),
    };
    c.keys.record_as(actor, entry).await;
}

/// Signs out.
pub async fn logout(
    State(c): St,
    headers: HeaderMap,
    Posted { admin, .. }: Posted<CsrfForm>,
) -> Response {
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        c.sign_ins.end(token);
    }
    c.keys
        .record(
            &admin.caller,
            Via::Console,
            AuditEntry {
                action: "console.sign_out",
                target: String::new(),
                detail: String::new(),
            },
        )
        .await;
    let mut r = Redirect::to("/console/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(SESSION_COOKIE, "", Duration::ZERO, c.tls)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}
