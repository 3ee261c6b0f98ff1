//! `X-Request-Id`: one id per request, in the upstream request, the response and the logs.

use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-sent id that is kept; longer or odd ones are replaced.
const MAX_LEN: usize = 128;

/// The client's id when it sent a sane one (a caller tracing its own requests), else a new
/// UUID v4.
pub fn of(req: &RequestHeader) -> HeaderValue {
    let mut sent = req.headers.get_all(HEADER).iter();
    if let (Some(v), None) = (sent.next(), sent.next()) {
        let ok = !v.is_empty()
            && v.len() <= MAX_LEN
            && v.as_bytes().iter().all(|b| b.is_ascii_graphic());
        if ok {
            return v.clone();
        }
    }
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ids: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for id in ids {
            r.append_header(HEADER, *id).unwrap();
        }
        r
    }

    #[test]
    fn keeps_a_sane_id_and_replaces_the_rest() {
        assert_eq!(of(&req(&["abc-123"])), "abc-123");
        for bad in [vec!["a b"], vec!["x"; 2], vec![]] {
            let id = of(&req(&bad));
            assert_eq!(id.len(), 36, "{bad:?} -> {id:?}");
        }
        assert_eq!(of(&req(&[&"a".repeat(129)])).len(), 36);
        assert_ne!(of(&req(&[])), of(&req(&[])));
    }
}
