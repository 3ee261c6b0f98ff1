//! W3C Trace Context (`traceparent`, `tracestate`): read from the client, written upstream.

use http::{HeaderMap, HeaderValue};

/// A valid `traceparent` (and the `tracestate` that goes with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
    pub trace_state: String,
}

/// Longest `tracestate` carried on: 32 members of up to 256 characters would be far more
/// than any real one, and a header the gateway forwards must stay bounded.
const MAX_TRACE_STATE: usize = 512;

impl TraceParent {
    /// The request's trace context; `None` when it has none or an invalid one (a new trace
    /// is started then, as the specification asks).
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        let mut values = headers.get_all("traceparent").iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        let mut parent = Self::parse(value.to_str().ok()?)?;
        let mut state = String::new();
        for v in headers.get_all("tracestate") {
            let Ok(v) = v.to_str() else {
                return Some(parent);
            };
            if !state.is_empty() {
                state.push(',');
            }
            state.push_str(v.trim());
        }
        if state.len() <= MAX_TRACE_STATE {
            parent.trace_state = state;
        }
        Some(parent)
    }

    /// `version "-" trace-id "-" parent-id "-" trace-flags`, lowercase hex (§3.2). A later
    /// version may append fields after a dash; version `ff` is invalid.
    fn parse(s: &str) -> Option<Self> {
        let b = s.trim().as_bytes();
        if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let version = unhex::<1>(&b[0..2])?[0];
        if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
            return None;
        }
        let trace_id = unhex::<16>(&b[3..35])?;
        let span_id = unhex::<8>(&b[36..52])?;
        let flags = unhex::<1>(&b[53..55])?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
            trace_state: String::new(),
        })
    }
}

fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        *out.get_mut(i)? = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A version-00 `traceparent`.
pub fn format(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> HeaderValue {
    let flags = if sampled { "01" } else { "00" };
    let text = format!("00-{}-{}-{flags}", hex(trace_id), hex(span_id));
    // Hex digits and dashes only.
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(value: &str) -> Option<TraceParent> {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_str(value).expect("header"));
        TraceParent::of(&h)
    }

    #[test]
    fn valid_headers_are_read_and_written_back_the_same() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = of(v).expect("valid");
        assert!(p.sampled);
        assert_eq!(format(&p.trace_id, &p.span_id, true), v);
        assert!(
            !of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .expect("valid")
                .sampled
        );
        // A later version with more fields.
        assert!(of("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
    }

    #[test]
    fn invalid_headers_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(of(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn an_oversized_tracestate_is_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        h.append("tracestate", HeaderValue::from_static("a=1"));
        h.append("tracestate", HeaderValue::from_static("b=2"));
        assert_eq!(TraceParent::of(&h).expect("valid").trace_state, "a=1,b=2");
        h.insert(
            "tracestate",
            HeaderValue::from_str(&"x".repeat(600)).expect("header"),
        );
        assert_eq!(TraceParent::of(&h).expect("valid").trace_state, "");
    }
}
