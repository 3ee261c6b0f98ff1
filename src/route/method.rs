//! Sets of HTTP methods, as a bit mask: matching one costs a shift and an AND.

use http::Method;

const NAMES: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];
/// Extension methods (`PROPFIND` …) share one bit, which only "all methods" includes.
const OTHER: u16 = 1 << NAMES.len();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSet(u16);

impl MethodSet {
    pub const ALL: MethodSet = MethodSet((OTHER << 1) - 1);

    /// Parses method names from the config; `None` means all methods.
    pub fn parse(names: Option<&[String]>) -> Result<MethodSet, String> {
        let Some(names) = names else {
            return Ok(Self::ALL);
        };
        if names.is_empty() {
            return Err("method list is empty (leave it out to mean every method)".into());
        }
        let mut bits = 0;
        for name in names {
            let upper = name.to_ascii_uppercase();
            match NAMES.iter().position(|n| *n == upper) {
                Some(i) => bits |= 1 << i,
                None => {
                    return Err(format!(
                        "unknown method {name:?} (known: {})",
                        NAMES.join(", ")
                    ))
                }
            }
        }
        Ok(MethodSet(bits))
    }

    fn bit(method: &Method) -> u16 {
        let i = match *method {
            Method::GET => 0,
            Method::HEAD => 1,
            Method::POST => 2,
            Method::PUT => 3,
            Method::DELETE => 4,
            Method::PATCH => 5,
            Method::OPTIONS => 6,
            Method::TRACE => 7,
            Method::CONNECT => 8,
            _ => return OTHER,
        };
        1 << i
    }

    pub fn contains(self, method: &Method) -> bool {
        self.0 & Self::bit(method) != 0
    }

    pub fn overlaps(self, other: MethodSet) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_all(self) -> bool {
        self == Self::ALL
    }

    /// The named methods in the set, in a fixed order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        NAMES
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, n)| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_methods_match_only_themselves() {
        let set = MethodSet::parse(Some(&["get".into(), "POST".into()])).unwrap();
        assert!(set.contains(&Method::GET));
        assert!(set.contains(&Method::POST));
        assert!(!set.contains(&Method::PUT));
        let propfind = Method::from_bytes(b"PROPFIND").unwrap();
        assert!(!set.contains(&propfind));
        assert!(MethodSet::ALL.contains(&propfind));
    }

    #[test]
    fn unknown_or_empty_lists_are_errors() {
        assert!(MethodSet::parse(Some(&["FETCH".into()])).is_err());
        assert!(MethodSet::parse(Some(&[])).is_err());
    }
}
