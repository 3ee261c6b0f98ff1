//! The path table: a trie of segments. Lookup walks the request path once, without allocating.
//!
//! Precedence (documented in the README):
//! 1. an exact path or template beats any prefix;
//! 2. between templates, at the first segment where they differ a literal beats `{param}`;
//! 3. between prefixes, the one with more segments wins, then literal before `{param}`;
//! 4. on one path, a route listing the request's method beats one that matches all methods.
//!    Two catch-alls, or two routes listing a same method, on one path are a config error.

use std::collections::HashMap;

use http::Method;

use super::method::MethodSet;
use super::path::next_segment;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// The whole path must match.
    Exact,
    /// The path must start with these segments.
    Prefix,
}

/// One segment of a configured path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(Box<str>),
    /// `{name}`: any one non-empty segment.
    Param(Box<str>),
}

/// Parses a configured path (already normalized) into segments.
pub fn parse_pattern(path: &str, kind: PathKind) -> Result<Vec<Segment>, String> {
    let mut body = path.strip_prefix('/').ok_or("path must start with '/'")?;
    if kind == PathKind::Prefix {
        // Prefixes match on segment boundaries, so `/a/` and `/a` are the same prefix.
        body = body.strip_suffix('/').unwrap_or(body);
        if body.is_empty() {
            return Ok(Vec::new());
        }
    }
    let mut segments = Vec::new();
    let mut rest = Some(body);
    while let Some(s) = rest {
        let (head, tail) = next_segment(s);
        rest = tail;
        if head.starts_with('{') || head.ends_with('}') {
            let name = head
                .strip_prefix('{')
                .and_then(|h| h.strip_suffix('}'))
                .filter(|n| {
                    !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
                .ok_or_else(|| format!("segment {head:?} is not a valid `{{name}}` parameter"))?;
            if segments.contains(&Segment::Param(name.into())) {
                return Err(format!("parameter {{{name}}} appears twice"));
            }
            segments.push(Segment::Param(name.into()));
        } else if head.contains(['{', '}']) {
            return Err(format!(
                "segment {head:?}: a parameter must be a whole segment"
            ));
        } else {
            segments.push(Segment::Literal(head.into()));
        }
    }
    Ok(segments)
}

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    /// (route, methods), method-specific routes first.
    exact: Vec<(usize, MethodSet)>,
    prefix: Vec<(usize, MethodSet)>,
}

impl Node {
    fn child(&mut self, segment: &Segment) -> &mut Node {
        match segment {
            Segment::Literal(s) => self.literal.entry(s.clone()).or_default(),
            // Templates that differ only in their parameters' names share a node.
            Segment::Param(_) => self.param.get_or_insert_with(Default::default),
        }
    }
}

fn pick(entries: &[(usize, MethodSet)], method: &Method) -> Option<usize> {
    entries
        .iter()
        .find(|(_, m)| m.contains(method))
        .map(|(i, _)| *i)
}

/// Routes for one host (or for any host).
#[derive(Debug, Default)]
pub struct PathTable {
    root: Node,
}

impl PathTable {
    /// Adds a route. Fails with the index of an existing route it would be ambiguous with.
    pub fn insert(
        &mut self,
        segments: &[Segment],
        kind: PathKind,
        methods: MethodSet,
        route: usize,
    ) -> Result<(), usize> {
        let mut node = &mut self.root;
        for segment in segments {
            node = node.child(segment);
        }
        let entries = match kind {
            PathKind::Exact => &mut node.exact,
            PathKind::Prefix => &mut node.prefix,
        };
        // A method-specific route may sit beside a catch-all (it wins); two of a kind may not overlap.
        let clash = |m: &MethodSet| m.overlaps(methods) && m.is_all() == methods.is_all();
        if let Some((other, _)) = entries.iter().find(|(_, m)| clash(m)) {
            return Err(*other);
        }
        entries.push((route, methods));
        // Specific methods before "all", so a route for GET wins over a catch-all.
        entries.sort_by_key(|(_, m)| m.is_all());
        Ok(())
    }

    /// Finds the route for a normalized path.
    pub fn find(&self, path: &str, method: &Method) -> Option<usize> {
        let body = path.strip_prefix('/')?;
        find_exact(&self.root, Some(body), method)
            .or_else(|| find_prefix(&self.root, Some(body), 0, method).map(|(_, r)| r))
    }
}

fn find_exact(node: &Node, rest: Option<&str>, method: &Method) -> Option<usize> {
    let Some(s) = rest else {
        return pick(&node.exact, method);
    };
    let (head, tail) = next_segment(s);
    if let Some(found) = node
        .literal
        .get(head)
        .and_then(|c| find_exact(c, tail, method))
    {
        return Some(found);
    }
    match &node.param {
        Some(p) if !head.is_empty() => find_exact(p, tail, method),
        _ => None,
    }
}

/// Returns the deepest matching prefix route as (depth, route).
fn find_prefix(
    node: &Node,
    rest: Option<&str>,
    depth: usize,
    method: &Method,
) -> Option<(usize, usize)> {
    let mut best = None;
    if let Some(s) = rest {
        let (head, tail) = next_segment(s);
        best = node
            .literal
            .get(head)
            .and_then(|c| find_prefix(c, tail, depth + 1, method));
        if let Some(p) = node.param.as_deref().filter(|_| !head.is_empty()) {
            if let Some(found) = find_prefix(p, tail, depth + 1, method) {
                if best.is_none_or(|(d, _)| found.0 > d) {
                    best = Some(found);
                }
            }
        }
    }
    best.or_else(|| pick(&node.prefix, method).map(|r| (depth, r)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, PathKind, Option<&[&str]>)]) -> PathTable {
        let mut t = PathTable::default();
        for (i, (path, kind, methods)) in routes.iter().enumerate() {
            let methods: Option<Vec<String>> =
                methods.map(|m| m.iter().map(|s| s.to_string()).collect());
            let set = MethodSet::parse(methods.as_deref()).unwrap();
            t.insert(&parse_pattern(path, *kind).unwrap(), *kind, set, i)
                .unwrap();
        }
        t
    }

    const E: PathKind = PathKind::Exact;
    const P: PathKind = PathKind::Prefix;

    #[test]
    fn exact_beats_template_beats_prefix() {
        let t = table(&[
            ("/ccm/channels/{id}", E, None),
            ("/ccm/channels/special", E, None),
            ("/ccm", P, None),
        ]);
        assert_eq!(t.find("/ccm/channels/special", &Method::GET), Some(1));
        assert_eq!(t.find("/ccm/channels/42", &Method::GET), Some(0));
        assert_eq!(t.find("/ccm/channels/42/x", &Method::GET), Some(2));
        assert_eq!(t.find("/ccm", &Method::GET), Some(2));
    }

    #[test]
    fn prefixes_match_whole_segments_and_longest_wins() {
        let t = table(&[
            ("/public/", P, None),
            ("/public/docs", P, None),
            ("/", P, Some(&["GET"])),
        ]);
        assert_eq!(t.find("/public", &Method::GET), Some(0));
        assert_eq!(t.find("/public/x", &Method::GET), Some(0));
        assert_eq!(t.find("/public/docs/a", &Method::GET), Some(1));
        assert_eq!(t.find("/publicity", &Method::GET), Some(2));
        assert_eq!(t.find("/publicity", &Method::POST), None);
    }

    #[test]
    fn templates_need_a_non_empty_segment_and_exact_length() {
        let t = table(&[("/ccm/channels/service-identifier/{id}", E, None)]);
        assert_eq!(
            t.find("/ccm/channels/service-identifier/abc", &Method::GET),
            Some(0)
        );
        assert_eq!(
            t.find("/ccm/channels/service-identifier/", &Method::GET),
            None
        );
        assert_eq!(
            t.find("/ccm/channels/service-identifier", &Method::GET),
            None
        );
        assert_eq!(
            t.find("/ccm/channels/service-identifier/a/b", &Method::GET),
            None
        );
    }

    #[test]
    fn method_specific_route_wins_and_falls_back() {
        let t = table(&[("/a", E, None), ("/a", E, Some(&["POST"]))]);
        assert_eq!(t.find("/a", &Method::POST), Some(1));
        assert_eq!(t.find("/a", &Method::GET), Some(0));
    }

    #[test]
    fn template_falls_back_to_literal_branch_sibling() {
        // The literal branch `/a/b` is a dead end for `/a/b/c`; the template must still match.
        let t = table(&[("/a/b", E, None), ("/a/{x}/c", E, None)]);
        assert_eq!(t.find("/a/b/c", &Method::GET), Some(1));
    }

    #[test]
    fn overlapping_methods_on_one_path_are_ambiguous() {
        let get = MethodSet::parse(Some(&["GET".into()])).unwrap();
        let get_post = MethodSet::parse(Some(&["GET".into(), "POST".into()])).unwrap();
        let mut t = PathTable::default();
        t.insert(&parse_pattern("/a/{id}", E).unwrap(), E, MethodSet::ALL, 0)
            .unwrap();
        t.insert(&parse_pattern("/a/{other}", E).unwrap(), E, get, 1)
            .unwrap();
        assert_eq!(
            t.insert(&parse_pattern("/a/{x}", E).unwrap(), E, get_post, 2),
            Err(1)
        );
        assert_eq!(
            t.insert(&parse_pattern("/a/{y}", E).unwrap(), E, MethodSet::ALL, 3),
            Err(0)
        );
        // The same path as a prefix is a different kind of route, not a clash.
        assert!(t
            .insert(&parse_pattern("/a/{id}", P).unwrap(), P, MethodSet::ALL, 4)
            .is_ok());
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert!(parse_pattern("/a/{}", E).is_err());
        assert!(parse_pattern("/a/file.{ext}", E).is_err());
        assert!(parse_pattern("a", E).is_err());
    }
}
