//! Request paths in the one form routes are matched on.
//!
//! A gateway that matches `/public/%2e%2e/admin` as public while the backend serves `/admin` has
//! no access control at all. So the path is normalized (RFC 3986 §6.2.2: escapes of unreserved
//! characters decoded, other escapes upper-cased) and anything a backend could read as a
//! different path (dot segments, empty segments, encoded or back slashes) is refused outright.

use std::borrow::Cow;

/// Why a path is refused; the gateway answers 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with '/'")]
    NotAbsolute,
    #[error("path contains a '.' or '..' segment")]
    DotSegment,
    #[error("path contains an empty segment")]
    EmptySegment,
    #[error("path contains an encoded '/' or a '\\'")]
    EncodedSeparator,
    #[error("path contains an encoded control character")]
    Control,
    #[error("path contains a malformed percent escape")]
    BadEscape,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Returns the normalized path, borrowed when it already was normal (the common case).
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let path: Cow<str> = if raw.bytes().any(|b| b == b'%' || b == b'\\') {
        Cow::Owned(decode(raw)?)
    } else {
        Cow::Borrowed(raw)
    };
    check_segments(&path)?;
    Ok(path)
}

fn decode(raw: &str) -> Result<String, PathError> {
    const UPPER: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::EncodedSeparator),
            b'%' => {
                let (hi, lo) = match (
                    bytes.get(i + 1).and_then(|b| hex(*b)),
                    bytes.get(i + 2).and_then(|b| hex(*b)),
                ) {
                    (Some(hi), Some(lo)) => (hi, lo),
                    _ => return Err(PathError::BadEscape),
                };
                let v = hi << 4 | lo;
                if v == b'/' || v == b'\\' {
                    return Err(PathError::EncodedSeparator);
                }
                if v < 0x20 || v == 0x7f {
                    return Err(PathError::Control);
                }
                if is_unreserved(v) {
                    out.push(v);
                } else {
                    out.extend_from_slice(&[b'%', UPPER[hi as usize], UPPER[lo as usize]]);
                }
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Only ASCII was decoded and the input was a str, so this cannot fail; map it anyway.
    String::from_utf8(out).map_err(|_| PathError::BadEscape)
}

fn check_segments(path: &str) -> Result<(), PathError> {
    let body = &path[1..];
    let mut segments = body.split('/').peekable();
    while let Some(segment) = segments.next() {
        match segment {
            "." | ".." => return Err(PathError::DotSegment),
            // A trailing slash is a real, distinct path; `a//b` is not.
            "" if segments.peek().is_some() => return Err(PathError::EmptySegment),
            _ => {}
        }
    }
    Ok(())
}

/// Splits off the first segment of a path body (the path without its leading `/`).
/// `None` as the rest means this was the last segment.
pub fn next_segment(body: &str) -> (&str, Option<&str>) {
    match body.find('/') {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    }
}

/// Segment `index` (from 0) of a normalized path, percent-decoded: what a backend reads as
/// the value of a `{param}` there. `None` if the path is shorter.
pub fn segment(path: &str, index: usize) -> Option<Cow<'_, [u8]>> {
    let raw = path.strip_prefix('/')?.split('/').nth(index)?;
    Some(percent_encoding::percent_decode_str(raw).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(normalize("/a/b/"), Ok(Cow::Borrowed("/a/b/"))));
        assert!(matches!(normalize("/"), Ok(Cow::Borrowed("/"))));
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_uppercased() {
        assert_eq!(normalize("/ccm/%63hannels").unwrap(), "/ccm/channels");
        assert_eq!(normalize("/a%2db").unwrap(), "/a-b");
        assert_eq!(normalize("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(normalize("/q%3f").unwrap(), "/q%3F");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert_eq!(normalize("/public/../admin"), Err(PathError::DotSegment));
        assert_eq!(
            normalize("/public/%2e%2e/admin"),
            Err(PathError::DotSegment)
        );
        assert_eq!(normalize("/public/%2E/admin"), Err(PathError::DotSegment));
        assert_eq!(normalize("/a/."), Err(PathError::DotSegment));
        assert_eq!(normalize("/a//b"), Err(PathError::EmptySegment));
        assert_eq!(normalize("/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/a%5Cb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/a\\b"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/a%00"), Err(PathError::Control));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%4"), Err(PathError::BadEscape));
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn segments_are_found_by_index_and_decoded() {
        assert_eq!(
            segment("/agencies/north/reports", 1).as_deref(),
            Some(&b"north"[..])
        );
        assert_eq!(
            segment("/a/caf%C3%A9", 1).as_deref(),
            Some("café".as_bytes())
        );
        assert_eq!(segment("/a/b%20c/", 1).as_deref(), Some(&b"b c"[..]));
        assert_eq!(segment("/a", 1), None);
    }

    #[test]
    fn segments_split_in_order() {
        assert_eq!(next_segment("a/b"), ("a", Some("b")));
        assert_eq!(next_segment("a/"), ("a", Some("")));
        assert_eq!(next_segment("a"), ("a", None));
        assert_eq!(next_segment(""), ("", None));
    }
}
