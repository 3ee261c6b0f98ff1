//! JWS compact tokens: splitting, decoding, and the registered-claim checks (RFC 7519 §4.1).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Header;
use serde_json::{Map, Value};

use super::AuthError;

/// Longer tokens are refused before any decoding. Keycloak tokens with many roles stay far below.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A token taken apart but not yet verified: nothing in it may be trusted.
pub struct Unverified<'a> {
    pub header: Header,
    pub claims: Map<String, Value>,
    /// `header.payload`, the signed bytes.
    pub message: &'a str,
    pub signature: &'a str,
}

/// Whether a token has the shape of a signed JWT (three dot-separated parts); any other
/// token is opaque to the gateway.
pub fn is_compact(token: &str) -> bool {
    token.bytes().filter(|&b| b == b'.').count() == 2
}

pub fn parse(token: &str) -> Result<Unverified<'_>, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed);
    }
    let (message, signature) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
    let (header, payload) = message.split_once('.').ok_or(AuthError::Malformed)?;
    // Exactly three parts: a JWE (five parts) or junk is malformed.
    if payload.contains('.') || signature.is_empty() {
        return Err(AuthError::Malformed);
    }
    // `alg: none` and unknown algorithms fail here: they are not variants of `Algorithm`.
    let header: Header = decode_json(header)?;
    // RFC 7515 §4.1.11: extensions listed in `crit` must be understood, and none are.
    if header.crit.is_some() {
        return Err(AuthError::CriticalHeader);
    }
    let claims: Map<String, Value> = decode_json(payload)?;
    Ok(Unverified {
        header,
        claims,
        message,
        signature,
    })
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

/// What the registered-claim checks need from an issuer.
pub struct TimeRules<'a> {
    pub audiences: &'a [Box<str>],
    pub leeway: u64,
    pub allow_non_expiring: bool,
    /// Whether `aud` must be present; when it is, it must always match.
    pub audience_required: bool,
}

/// Checks `exp`, `nbf` and `aud` of verified claims at time `now` (seconds since the epoch).
/// Returns `exp`, if any.
pub fn check_claims(
    claims: &Map<String, Value>,
    rules: &TimeRules<'_>,
    now: u64,
) -> Result<Option<u64>, AuthError> {
    let exp = numeric_date(claims.get("exp"))?;
    match exp {
        Some(exp) if now > exp.saturating_add(rules.leeway) => return Err(AuthError::Expired),
        None if !rules.allow_non_expiring => return Err(AuthError::MissingExpiry),
        _ => {}
    }
    if let Some(nbf) = numeric_date(claims.get("nbf"))? {
        if nbf > now.saturating_add(rules.leeway) {
            return Err(AuthError::NotYetValid);
        }
    }
    // A token from the future was minted by a clock (or a hand) that cannot be trusted.
    if let Some(iat) = numeric_date(claims.get("iat"))? {
        if iat > now.saturating_add(rules.leeway) {
            return Err(AuthError::IssuedInFuture);
        }
    }
    let accepted = |a: &str| rules.audiences.iter().any(|x| **x == *a);
    let audience_ok = match claims.get("aud") {
        None => !rules.audience_required,
        Some(Value::String(a)) => accepted(a),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(accepted),
        _ => false,
    };
    if !audience_ok {
        return Err(AuthError::WrongAudience);
    }
    Ok(exp)
}

/// A NumericDate may be fractional; it must not be negative or anything but a number.
fn numeric_date(value: Option<&Value>) -> Result<Option<u64>, AuthError> {
    match value {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) => Ok(Some(v)),
            None => match n.as_f64() {
                Some(f) if f >= 0.0 && f.is_finite() => Ok(Some(f as u64)),
                _ => Err(AuthError::InvalidClaim("time claim out of range")),
            },
        },
        Some(_) => Err(AuthError::InvalidClaim("time claim is not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(v: &str) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    #[test]
    fn three_parts_are_required() {
        let h = b64(r#"{"alg":"RS256"}"#);
        let p = b64(r#"{"sub":"a"}"#);
        assert!(parse(&format!("{h}.{p}.c2ln")).is_ok());
        assert!(matches!(
            parse(&format!("{h}.{p}")),
            Err(AuthError::Malformed)
        ));
        assert!(matches!(
            parse(&format!("{h}.{p}.")),
            Err(AuthError::Malformed)
        ));
        assert!(matches!(
            parse(&format!("{h}.{p}.a.b.c")),
            Err(AuthError::Malformed)
        ));
        assert!(matches!(parse("garbage"), Err(AuthError::Malformed)));
        assert!(matches!(
            parse(&"a".repeat(MAX_TOKEN_BYTES + 1)),
            Err(AuthError::Malformed)
        ));
    }

    #[test]
    fn critical_extensions_are_refused() {
        let p = b64(r#"{"sub":"a"}"#);
        let h = b64(r#"{"alg":"RS256","crit":["exp"],"exp":1}"#);
        assert!(matches!(
            parse(&format!("{h}.{p}.c2ln")),
            Err(AuthError::CriticalHeader)
        ));
        let h = b64(r#"{"alg":"RS256","crit":"exp"}"#);
        assert!(parse(&format!("{h}.{p}.c2ln")).is_err());
    }

    #[test]
    fn alg_none_does_not_parse() {
        let h = b64(r#"{"alg":"none"}"#);
        let p = b64(r#"{"sub":"a"}"#);
        assert!(matches!(
            parse(&format!("{h}.{p}.c2ln")),
            Err(AuthError::Malformed)
        ));
    }

    fn rules(aud: &[Box<str>]) -> TimeRules<'_> {
        TimeRules {
            audiences: aud,
            leeway: 30,
            allow_non_expiring: false,
            audience_required: true,
        }
    }

    #[test]
    fn time_and_audience_rules() {
        let aud: Vec<Box<str>> = vec!["api".into()];
        let r = rules(&aud);
        let c = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(
            check_claims(&c(json!({"exp": 1000, "aud": "api"})), &r, 1000).unwrap(),
            Some(1000)
        );
        assert!(check_claims(&c(json!({"exp": 1000, "aud": "api"})), &r, 1030).is_ok());
        assert!(matches!(
            check_claims(&c(json!({"exp": 1000, "aud": "api"})), &r, 1031),
            Err(AuthError::Expired)
        ));
        assert!(matches!(
            check_claims(&c(json!({"aud": "api"})), &r, 1),
            Err(AuthError::MissingExpiry)
        ));
        assert!(matches!(
            check_claims(&c(json!({"exp": 9e3, "nbf": 100, "aud": "api"})), &r, 69),
            Err(AuthError::NotYetValid)
        ));
        assert!(check_claims(
            &c(json!({"exp": 9e3, "nbf": 100, "aud": ["x", "api"]})),
            &r,
            70
        )
        .is_ok());
        assert!(matches!(
            check_claims(&c(json!({"exp": 9e3, "aud": ["x"]})), &r, 1),
            Err(AuthError::WrongAudience)
        ));
        assert!(matches!(
            check_claims(&c(json!({"exp": 9e3})), &r, 1),
            Err(AuthError::WrongAudience)
        ));
        let vouched = TimeRules {
            audience_required: false,
            ..rules(&aud)
        };
        assert!(check_claims(&c(json!({"exp": 9e3})), &vouched, 1).is_ok());
        assert!(matches!(
            check_claims(&c(json!({"exp": 9e3, "aud": "x"})), &vouched, 1),
            Err(AuthError::WrongAudience)
        ));
        assert!(check_claims(&c(json!({"exp": 9e3, "iat": 130, "aud": "api"})), &r, 100).is_ok());
        assert!(matches!(
            check_claims(&c(json!({"exp": 9e3, "iat": 131, "aud": "api"})), &r, 100),
            Err(AuthError::IssuedInFuture)
        ));
        assert!(matches!(
            check_claims(&c(json!({"exp": "9", "aud": "api"})), &r, 1),
            Err(AuthError::InvalidClaim(_))
        ));
        assert!(matches!(
            check_claims(&c(json!({"exp": -1, "aud": "api"})), &r, 1),
            Err(AuthError::InvalidClaim(_))
        ));
    }
}
