//! The admin check: `Authorization: Bearer <FLEET_Q_ADMIN_TOKEN>` on admin
//! routes when a token is configured, compared in constant time.

use actix_web::http::header;
use actix_web::HttpRequest;

use super::error::{ApiError, ErrorType};
use super::AppState;

/// 401 without credentials, 403 with wrong ones; open when no token is set.
pub(crate) fn require_admin(req: &HttpRequest, st: &AppState) -> Result<(), ApiError> {
    let Some(token) = &st.admin_token else {
        return Ok(());
    };
    let Some(given) = req.headers().get(header::AUTHORIZATION) else {
        return Err(ApiError::new(
            ErrorType::Unauthorized,
            "this route requires Authorization: Bearer <FLEET_Q_ADMIN_TOKEN>",
            req,
        ));
    };
    // The scheme is case-insensitive (RFC 9110 §11.1): `Bearer`, `bearer`, `BEARER`.
    let given = given.as_bytes();
    let presented = match given.iter().position(|b| *b == b' ') {
        Some(i) if given[..i].eq_ignore_ascii_case(b"bearer") => {
            let rest = &given[i..];
            &rest[rest.iter().take_while(|b| **b == b' ').count()..]
        }
        _ => b"",
    };
    use subtle::ConstantTimeEq;
    let want = token.expose().as_bytes();
    // Constant time in the token's content; the length check leaks only length.
    let ok = presented.len() == want.len() && bool::from(presented.ct_eq(want));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorType::PermissionDenied,
            "the admin token is not valid",
            req,
        ))
    }
}
