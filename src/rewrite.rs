//! What a route changes on the way through: the path sent upstream (`strip_prefix`,
//! `rewrite`) and the headers of the request and of the response.

use std::collections::BTreeMap;

use http::header::{HeaderName, HeaderValue};

use crate::config::{HeaderEditsConf, Invalid, KeyPath};
use crate::route::{self, PathKind, Pattern, Segment};

/// One piece of a rewrite template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(Box<str>),
    /// The request path's segment at this index.
    Segment(usize),
}

/// How the path sent upstream is made from the routed (normalized) path. The query is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// Drop the first `n` segments.
    StripPrefix(usize),
    /// The matched segments replaced by the template; the rest of a prefix route's path
    /// follows.
    Template { parts: Vec<Part>, matched: usize },
}

impl Rewrite {
    /// `strip_prefix`: literal leading segments of the route's own path.
    pub fn strip_prefix(prefix: &str, pattern: &Pattern, at: &KeyPath) -> Result<Self, Invalid> {
        let err = |m: &str| Invalid::new(at.clone(), m.to_string());
        let prefix = route::normalize(prefix).map_err(|e| err(&e.to_string()))?;
        let segments = route::parse_pattern(&prefix, PathKind::Prefix).map_err(|e| err(&e))?;
        if segments.is_empty() {
            return Err(err("must name at least one segment"));
        }
        let literal_prefix = segments.len() <= pattern.segments.len()
            && segments.iter().zip(&pattern.segments).all(
                |(s, p)| matches!((s, p), (Segment::Literal(a), Segment::Literal(b)) if a == b),
            );
        if !literal_prefix {
            return Err(err("must be literal leading segments of the route's path"));
        }
        Ok(Rewrite::StripPrefix(segments.len()))
    }

    /// `rewrite`: a path whose `{param}` segments are the route's parameters.
    pub fn template(template: &str, pattern: &Pattern, at: &KeyPath) -> Result<Self, Invalid> {
        let err = |m: String| Invalid::new(at.clone(), m);
        let body = template
            .strip_prefix('/')
            .ok_or_else(|| err("must start with '/'".into()))?;
        let mut parts = Vec::new();
        for segment in body.split('/').filter(|s| !s.is_empty()) {
            let part = match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => {
                    let index = pattern
                        .segments
                        .iter()
                        .position(|s| matches!(s, Segment::Param(p) if **p == *name));
                    Part::Segment(index.ok_or_else(|| {
                        err(format!("the route's path has no parameter {{{name}}}"))
                    })?)
                }
                None if segment.contains(['{', '}']) => {
                    return Err(err(format!(
                        "segment {segment:?}: a parameter must be a whole segment"
                    )))
                }
                None => {
                    let raw = format!("/{segment}");
                    let normal = route::normalize(&raw).map_err(|e| err(e.to_string()))?;
                    Part::Text(normal[1..].into())
                }
            };
            parts.push(part);
        }
        Ok(Rewrite::Template {
            parts,
            matched: pattern.segments.len(),
        })
    }

    /// The path to send upstream for a routed `path`.
    pub fn apply(&self, path: &str) -> String {
        let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
        let mut out = String::with_capacity(path.len());
        let rest = match self {
            Rewrite::StripPrefix(n) => segments.get(*n..).unwrap_or_default(),
            Rewrite::Template { parts, matched } => {
                for part in parts {
                    out.push('/');
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::Segment(i) => out.push_str(segments.get(*i).unwrap_or(&"")),
                    }
                }
                segments.get(*matched..).unwrap_or_default()
            }
        };
        for s in rest {
            out.push('/');
            out.push_str(s);
        }
        if out.is_empty() {
            out.push('/');
        }
        out
    }
}

/// Headers a route sets and removes.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderEdits {
    pub fn compile(conf: &HeaderEditsConf, at: &KeyPath) -> Result<Self, Invalid> {
        let name = |n: &str, at: KeyPath| {
            HeaderName::try_from(n)
                .map_err(|_| Invalid::new(at, format!("{n:?} is not a header name")))
        };
        let remove = conf
            .remove
            .iter()
            .enumerate()
            .map(|(i, n)| name(n, at.key("remove").index(i)))
            .collect::<Result<_, _>>()?;
        let set = set_list(&conf.set, &at.key("set"), name)?;
        Ok(HeaderEdits { remove, set })
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }

    /// Headers to remove, then to set (replacing any of the same name).
    pub fn edits(&self) -> (&[HeaderName], &[(HeaderName, HeaderValue)]) {
        (&self.remove, &self.set)
    }
}

fn set_list(
    set: &BTreeMap<String, String>,
    at: &KeyPath,
    name: impl Fn(&str, KeyPath) -> Result<HeaderName, Invalid>,
) -> Result<Vec<(HeaderName, HeaderValue)>, Invalid> {
    set.iter()
        .map(|(n, v)| {
            let at = at.key(n);
            let value = HeaderValue::from_str(v)
                .map_err(|_| Invalid::new(at.clone(), "not a header value"))?;
            Ok((name(n, at)?, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::MethodSet;

    fn pattern(path: &str, kind: PathKind) -> Pattern {
        Pattern {
            host: None,
            segments: route::parse_pattern(path, kind).unwrap(),
            kind,
            methods: MethodSet::parse(None).unwrap(),
        }
    }

    #[test]
    fn prefixes_are_stripped_on_segments() {
        let p = pattern("/api/v1", PathKind::Prefix);
        let r = Rewrite::strip_prefix("/api", &p, &KeyPath::root()).unwrap();
        assert_eq!(r.apply("/api/v1/agents"), "/v1/agents");
        assert_eq!(r.apply("/api"), "/");
        assert_eq!(r.apply("/api/"), "/");
        assert!(Rewrite::strip_prefix("/ap", &p, &KeyPath::root()).is_err());
        assert!(Rewrite::strip_prefix("/api/v1/x", &p, &KeyPath::root()).is_err());
    }

    #[test]
    fn templates_take_parameters_and_the_rest() {
        let p = pattern("/agencies/{agency}/reports", PathKind::Prefix);
        let r = Rewrite::template("/v2/reports/{agency}", &p, &KeyPath::root()).unwrap();
        assert_eq!(r.apply("/agencies/north/reports"), "/v2/reports/north");
        assert_eq!(
            r.apply("/agencies/n%20e/reports/2026/q1"),
            "/v2/reports/n%20e/2026/q1"
        );
        let root = Rewrite::template("/", &p, &KeyPath::root()).unwrap();
        assert_eq!(root.apply("/agencies/north/reports"), "/");
        assert!(Rewrite::template("/x/{tenant}", &p, &KeyPath::root()).is_err());
        assert!(Rewrite::template("x", &p, &KeyPath::root()).is_err());
    }
}
