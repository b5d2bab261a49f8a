//! Signing in and out.

use std::time::Duration;

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;

use super::Console;
use super::guard::{CsrfForm, St};
use super::signin::{
    LOGIN_CSRF_COOKIE, SESSION_COOKIE, SIGN_IN_LIFETIME, cookie, random_token, same_token,
    set_cookie,
};
use crate::api::Via;
use crate::keystore::AuditEntry;

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
pub async fn login(State(c): St, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same_token(&form.csrf, expected) {
        return login_page(
            &c,
            StatusCode::FORBIDDEN,
            Some("The sign-in form expired or was not sent by this console. Try again."),
        );
    }
    let Some(caller) = c.check_key(&form.key) else {
        return login_page(
            &c,
            StatusCode::UNAUTHORIZED,
            Some("That is not an admin key of this gateway (or it was revoked or expired)."),
        );
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

/// Signs out.
pub async fn logout(State(c): St, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    let admin = match c.form_admin(&headers, &form.csrf) {
        Ok(a) => a,
        Err(why) => return c.refuse(why),
    };
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
