//! The one literal encoder: every value that reaches Snowflake SQL goes through
//! these functions (`snowflake-api` has no bind parameters).
//!
//! Rules:
//! - user text (payloads, types, keys, errors, pod ids, results) travels as base64
//!   inside a quoted literal and is decoded in SQL: `BASE64_DECODE_STRING('…')`.
//!   The base64 alphabet (`A–Z a–z 0–9 + / =`) contains no quote, backslash or `$`,
//!   so no input can end the literal;
//! - step ids are rendered from the parsed UUID (hex and `-` only);
//! - numbers are rendered from Rust integers and floats (finite only);
//! - NULL is the keyword, typed where SQL needs a type;
//! - identifiers from configuration are validated at start-up (`crate::config`) and never
//!   interpolated here: sessions log in with the configured database and schema.

use base64::Engine;
use fleet_q_actors::StepId;

/// `BASE64_DECODE_STRING('<base64 of s>')`: any text, safely.
pub fn text(s: &str) -> String {
    format!("BASE64_DECODE_STRING('{}')", b64(s))
}

/// Base64 of `s` for a VALUES column decoded later in SQL.
pub fn b64_lit(s: &str) -> String {
    format!("'{}'", b64(s))
}

/// [`b64_lit`] or `NULL`.
pub fn b64_opt(s: Option<&str>) -> String {
    s.map_or_else(|| "CAST(NULL AS VARCHAR)".to_string(), b64_lit)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// A step id literal: `'0190…-…'`.
pub fn id(id: StepId) -> String {
    format!("'{}'", id.as_uuid().hyphenated())
}

/// An integer literal.
pub fn int(n: i64) -> String {
    n.to_string()
}

/// A float literal (non-finite values become 0).
pub fn float(f: f64) -> String {
    if f.is_finite() {
        format!("{f:.6}")
    } else {
        "0".to_string()
    }
}

/// A generated token (uuid simple form: hex only) as a literal.
pub fn token(t: &uuid::Uuid) -> String {
    format!("'{}'", t.simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_lit(lit: &str) -> String {
        let inner = lit
            .strip_prefix("BASE64_DECODE_STRING('")
            .and_then(|r| r.strip_suffix("')"))
            .expect("encoded form");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(inner)
            .unwrap();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn text_round_trips_and_never_escapes_its_literal() {
        for s in [
            "",
            "plain",
            "it's",
            "\\' OR 1=1 --",
            "$$ dollar $$",
            "'); DROP TABLE STEP_TRACKER; --",
            "żółć 日本語 🚀",
            "line\nbreak\ttab",
        ] {
            let lit = text(s);
            assert_eq!(decode_lit(&lit), s);
            let inner = &lit["BASE64_DECODE_STRING('".len()..lit.len() - 2];
            assert!(
                inner
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c)),
                "{lit}"
            );
        }
    }

    #[test]
    fn optional_text_is_a_typed_null() {
        assert_eq!(b64_opt(None), "CAST(NULL AS VARCHAR)");
        assert_eq!(b64_opt(Some("a")), "'YQ=='");
    }

    #[test]
    fn ids_numbers_and_tokens_are_plain_safe_characters() {
        let sid = StepId::generate();
        let lit = id(sid);
        assert_eq!(lit, format!("'{sid}'"));
        assert!(lit[1..lit.len() - 1]
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == '-'));
        assert_eq!(int(-42), "-42");
        assert_eq!(float(0.25), "0.250000");
        assert_eq!(float(f64::NAN), "0");
        let t = uuid::Uuid::now_v7();
        assert!(token(&t)[1..33].chars().all(|c| c.is_ascii_hexdigit()));
    }
}
