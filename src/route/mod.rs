//! Routing: which configured route a request belongs to.

mod method;
mod path;
mod table;

use std::collections::HashMap;

use http::Method;

pub use method::MethodSet;
pub use path::{normalize, segment, PathError};
use table::PathTable;
pub use table::{parse_pattern, PathKind, Segment};

/// All routes of a config, indexed for lookup. Generic over what a route carries so that this
/// module knows nothing of policies or upstreams.
#[derive(Debug)]
pub struct Router<R> {
    routes: Vec<R>,
    by_host: HashMap<Box<str>, PathTable>,
    any_host: PathTable,
}

/// A route of one [`Router`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteId(usize);

/// Where a new route lands in the table.
pub struct RouteKey<'a> {
    /// Lower-case host, if the route is bound to one.
    pub host: Option<&'a str>,
    pub segments: &'a [Segment],
    pub kind: PathKind,
    pub methods: MethodSet,
}

/// Where a route applies, as configured: for explaining a lookup route by route.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// Lower-case host, if the route is bound to one.
    pub host: Option<Box<str>>,
    pub segments: Vec<Segment>,
    pub kind: PathKind,
    pub methods: MethodSet,
}

impl Pattern {
    /// Where the route lands in a [`Router`].
    pub fn key(&self) -> RouteKey<'_> {
        RouteKey {
            host: self.host.as_deref(),
            segments: &self.segments,
            kind: self.kind,
            methods: self.methods,
        }
    }

    /// Whether a normalized path is one this route takes, whatever the host and method.
    pub fn matches_path(&self, path: &str) -> bool {
        let Some(body) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = body.split('/');
        for segment in &self.segments {
            match (segment, parts.next()) {
                (Segment::Literal(l), Some(p)) if **l == *p => {}
                (Segment::Param(_), Some(p)) if !p.is_empty() => {}
                _ => return false,
            }
        }
        match self.kind {
            PathKind::Prefix => true,
            PathKind::Exact => parts.next().is_none(),
        }
    }

    /// Whether a request's `Host` (any case, port allowed) is one this route takes.
    pub fn matches_host(&self, host: Option<&str>) -> bool {
        match &self.host {
            None => true,
            Some(h) => host.is_some_and(|r| strip_port(r).eq_ignore_ascii_case(h)),
        }
    }
}

impl<R> Default for Router<R> {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            by_host: HashMap::new(),
            any_host: PathTable::default(),
        }
    }
}

impl<R> Router<R> {
    /// Adds a route; on ambiguity returns the existing route it collides with.
    pub fn add(&mut self, key: RouteKey<'_>, route: R) -> Result<(), &R> {
        let index = self.routes.len();
        let table = match key.host {
            Some(h) => self.by_host.entry(h.into()).or_default(),
            None => &mut self.any_host,
        };
        match table.insert(key.segments, key.kind, key.methods, index) {
            Ok(()) => {
                self.routes.push(route);
                Ok(())
            }
            Err(other) => Err(&self.routes[other]),
        }
    }

    /// Finds the route of a request. `host` is the request's `Host` (any case, port allowed);
    /// `path` must be normalized. Routes bound to the host are tried before host-less ones.
    pub fn find(&self, host: Option<&str>, path: &str, method: &Method) -> Option<&R> {
        self.find_id(host, path, method).map(|id| &self[id])
    }

    /// As [`Router::find`], giving the route's id.
    pub fn find_id(&self, host: Option<&str>, path: &str, method: &Method) -> Option<RouteId> {
        let bound = host
            .map(strip_port)
            .filter(|_| !self.by_host.is_empty())
            .and_then(|h| self.lookup_host(h))
            .and_then(|t| t.find(path, method));
        bound
            .or_else(|| self.any_host.find(path, method))
            .map(RouteId)
    }

    fn lookup_host(&self, host: &str) -> Option<&PathTable> {
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_host.get(host.to_ascii_lowercase().as_str())
        } else {
            self.by_host.get(host)
        }
    }

    pub fn routes(&self) -> &[R] {
        &self.routes
    }
}

impl<R> std::ops::Index<RouteId> for Router<R> {
    type Output = R;

    /// Ids come from the same router, so they are always in range.
    fn index(&self, id: RouteId) -> &R {
        &self.routes[id.0]
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(r: &mut Router<&'static str>, host: Option<&str>, path: &str, name: &'static str) {
        let segments = parse_pattern(path, PathKind::Exact).unwrap();
        let key = RouteKey {
            host,
            segments: &segments,
            kind: PathKind::Exact,
            methods: MethodSet::ALL,
        };
        assert!(r.add(key, name).is_ok());
    }

    #[test]
    fn host_bound_routes_win_and_fall_back_to_any_host() {
        let mut r = Router::default();
        add(&mut r, Some("api.example.com"), "/a", "bound");
        add(&mut r, None, "/a", "any");
        add(&mut r, None, "/b", "any-b");
        assert_eq!(
            r.find(Some("API.example.com:8443"), "/a", &Method::GET),
            Some(&"bound")
        );
        assert_eq!(r.find(Some("other"), "/a", &Method::GET), Some(&"any"));
        assert_eq!(
            r.find(Some("api.example.com"), "/b", &Method::GET),
            Some(&"any-b")
        );
        assert_eq!(r.find(None, "/a", &Method::GET), Some(&"any"));
        assert_eq!(r.find(None, "/c", &Method::GET), None);
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("a.b:80"), "a.b");
        assert_eq!(strip_port("a.b"), "a.b");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
