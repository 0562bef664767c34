//! Who may use the dashboard, and proof that an action came from it.
//!
//! - **Session.** With `FLEET_Q_ADMIN_TOKEN` set, the dashboard asks for the
//!   token once (`/ui/login`) and keeps a session in the `fq_session` cookie
//!   (`HttpOnly`, `SameSite=Strict`, path `/`, `Secure` over HTTPS): its
//!   expiry time and an HMAC-SHA256 of it keyed by the token. Every pod with
//!   the same token accepts it (pods share no memory), changing the token ends
//!   every session, and nothing is stored server-side. Without a token the
//!   dashboard is open, as the admin API is.
//! - **CSRF.** Every action is a POST carrying a `csrf` form field equal to the
//!   `fq_csrf` cookie (random, `HttpOnly`, `SameSite=Strict`): a page of another
//!   site can neither read the cookie nor make the browser send it, so it cannot
//!   forge the pair. A POST whose `Origin` header names another host is refused
//!   as well. This holds with and without a token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header;
use actix_web::HttpRequest;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// The session cookie.
pub const SESSION_COOKIE: &str = "fq_session";
/// The CSRF cookie.
pub const CSRF_COOKIE: &str = "fq_csrf";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

fn mac(token: &Secret, what: &str) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(token.expose().as_bytes())
        .expect("HMAC takes a key of any length");
    m.update(b"fleet-q-ui-session:");
    m.update(what.as_bytes());
    hex(&m.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// A new session cookie value for `token`.
pub fn new_session(token: &Secret) -> String {
    let exp = (unix_now() + SESSION_TTL.as_secs()).to_string();
    format!("{exp}.{}", mac(token, &exp))
}

/// True when `value` is an unexpired session signed with `token`.
pub fn session_valid(token: &Secret, value: &str) -> bool {
    let Some((exp, sig)) = value.split_once('.') else {
        return false;
    };
    let Ok(t) = exp.parse::<u64>() else {
        return false;
    };
    let want = mac(token, exp);
    t > unix_now() && sig.len() == want.len() && bool::from(sig.as_bytes().ct_eq(want.as_bytes()))
}

/// True when the request may see the dashboard: no token is configured, or
/// it carries a valid session.
pub fn signed_in(req: &HttpRequest, token: Option<&Secret>) -> bool {
    match token {
        None => true,
        Some(t) => req
            .cookie(SESSION_COOKIE)
            .is_some_and(|c| session_valid(t, c.value())),
    }
}

/// True when `given` equals the configured token (constant time in content).
pub fn token_matches(token: &Secret, given: &str) -> bool {
    let want = token.expose().as_bytes();
    given.len() == want.len() && bool::from(given.as_bytes().ct_eq(want))
}

fn secure(req: &HttpRequest) -> bool {
    req.connection_info().scheme() == "https"
}

/// A cookie with the dashboard's attributes.
pub fn cookie(
    req: &HttpRequest,
    name: &'static str,
    value: String,
    max_age: Duration,
) -> Cookie<'static> {
    Cookie::build(name, value)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure(req))
        .max_age(actix_web::cookie::time::Duration::seconds(
            max_age.as_secs() as i64,
        ))
        .finish()
}

/// The request's CSRF token, or a new one to set (`.1` is true when it must be
/// set on the response).
pub fn csrf_token(req: &HttpRequest) -> (String, bool) {
    match req.cookie(CSRF_COOKIE) {
        Some(c) if c.value().len() == 32 && c.value().bytes().all(|b| b.is_ascii_hexdigit()) => {
            (c.value().to_string(), false)
        }
        _ => (hex(&rand::random::<[u8; 16]>()), true),
    }
}

/// Why a POST is not accepted as the dashboard's own.
pub fn check_post(req: &HttpRequest, form_csrf: &str) -> Result<(), &'static str> {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let host = req.connection_info().host().to_string();
        let origin = origin.to_str().unwrap_or("");
        let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
        if origin == "null" || !origin_host.eq_ignore_ascii_case(&host) {
            return Err("the request came from another site");
        }
    }
    let Some(cookie) = req.cookie(CSRF_COOKIE) else {
        return Err("the form's security cookie is missing; reload the page and try again");
    };
    let want = cookie.value().as_bytes();
    if want.len() != 32 || form_csrf.len() != 32 || !bool::from(form_csrf.as_bytes().ct_eq(want)) {
        return Err("the form's security token does not match; reload the page and try again");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_bound_to_the_token_and_expire() {
        let t = Secret::new("s3cret".to_string());
        let s = new_session(&t);
        assert!(session_valid(&t, &s));
        assert!(!session_valid(&Secret::new("other".to_string()), &s));
        let (exp, sig) = s.split_once('.').unwrap();
        let later = (exp.parse::<u64>().unwrap() + 1).to_string();
        assert!(
            !session_valid(&t, &format!("{later}.{sig}")),
            "the expiry is signed"
        );
        let past = "1000".to_string();
        assert!(
            !session_valid(&t, &format!("{past}.{}", mac(&t, &past))),
            "expired"
        );
        assert!(!session_valid(&t, "garbage"));
    }
}
