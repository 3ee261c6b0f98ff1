//! The conditions of a rule, compiled from `[[routes.allow]]` / `[[routes.deny]]`, and what
//! they look at: the caller, the request, the connection.

use std::net::IpAddr;

use http::header::HeaderName;
use ipnet::IpNet;

use super::Request;
use crate::authenticate::PrincipalKind;
use crate::authenticate::{Authenticator, ClaimPath, ClaimSlot, ClaimValue, Principal};
use crate::config::{CallerKind, Invalid, KeyPath, RuleConf};
use crate::route;

/// A value a claim is compared with: TOML strings and numbers as text, booleans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Expected {
    Text(Box<str>),
    Bool(bool),
}

impl Expected {
    fn equals(&self, claim: &ClaimValue) -> bool {
        match (self, claim) {
            (Expected::Text(x), ClaimValue::Text(t)) => x == t,
            (Expected::Bool(x), ClaimValue::Bool(b)) => x == b,
            _ => false,
        }
    }
}

/// What a claim must be.
#[derive(Debug, Clone)]
pub(super) enum ClaimTest {
    Equals(Expected),
    OneOf(Vec<Expected>),
    /// An array claim holds this value.
    Contains(Box<str>),
    Present(bool),
}

impl ClaimTest {
    fn holds(&self, claim: &ClaimValue) -> bool {
        match self {
            ClaimTest::Equals(x) => x.equals(claim),
            ClaimTest::OneOf(xs) => xs.iter().any(|x| x.equals(claim)),
            ClaimTest::Contains(x) => matches!(claim, ClaimValue::List(l) if l.contains(x)),
            ClaimTest::Present(p) => (*claim != ClaimValue::Absent) == *p,
        }
    }
}

/// Where a `match` takes the value a claim must equal.
#[derive(Debug, Clone)]
pub(super) enum Source {
    /// A path parameter, by its segment's index.
    Param(usize),
    Header(HeaderName),
}

/// One condition of a rule.
#[derive(Debug, Clone)]
pub(super) enum Condition {
    /// Any one of these roles.
    AnyRole(Vec<Box<str>>),
    /// Every one of these scopes.
    AllScopes(Vec<Box<str>>),
    /// The calling client is one of these.
    Client(Vec<Box<str>>),
    Claim(ClaimSlot, ClaimTest),
    /// A request value equals a claim (or is one of an array claim's values).
    Match(Source, ClaimSlot),
    Caller(CallerKind),
    CertSubject(Vec<Box<str>>),
    From(Vec<IpNet>),
    NotFrom(Vec<IpNet>),
}

impl Condition {
    /// Whether this condition can only hold for a verified caller.
    pub(super) fn needs_principal(&self) -> bool {
        !matches!(
            self,
            Condition::CertSubject(_)
                | Condition::From(_)
                | Condition::NotFrom(_)
                | Condition::Caller(CallerKind::Anonymous)
        )
    }

    pub(super) fn reads_headers(&self) -> bool {
        matches!(self, Condition::Match(Source::Header(_), _))
    }

    pub(super) fn holds(&self, req: &Request<'_>, principal: Option<&Principal>) -> bool {
        let within = |nets: &[IpNet], ip: IpAddr| nets.iter().any(|n| n.contains(&ip));
        match (self, principal) {
            (Condition::CertSubject(list), _) => req
                .client_cert_subject
                .is_some_and(|s| list.iter().any(|x| **x == *s)),
            (Condition::From(nets), _) => within(nets, req.client_ip),
            (Condition::NotFrom(nets), _) => !within(nets, req.client_ip),
            (Condition::Caller(kind), p) => match (kind, p) {
                (CallerKind::Anonymous, p) => p.is_none(),
                (CallerKind::Users, Some(p)) => p.kind == PrincipalKind::User,
                (CallerKind::Services, Some(p)) => p.kind == PrincipalKind::Service,
                (_, None) => false,
            },
            (_, None) => false,
            (Condition::AnyRole(roles), Some(p)) => roles.iter().any(|r| p.has_role(r)),
            (Condition::AllScopes(scopes), Some(p)) => scopes.iter().all(|s| p.has_scope(s)),
            (Condition::Client(list), Some(p)) => p
                .client_id
                .as_deref()
                .is_some_and(|c| list.iter().any(|x| **x == *c)),
            (Condition::Claim(slot, test), Some(p)) => test.holds(p.claim_value(*slot)),
            (Condition::Match(source, slot), Some(p)) => {
                let value = match source {
                    Source::Param(i) => route::segment(req.path, *i),
                    Source::Header(name) => req
                        .headers
                        .get(name)
                        .map(|v| std::borrow::Cow::Borrowed(v.as_bytes())),
                };
                let Some(value) = value else {
                    return false;
                };
                match p.claim_value(*slot) {
                    ClaimValue::Text(t) => t.as_bytes() == &*value,
                    ClaimValue::List(l) => l.iter().any(|t| t.as_bytes() == &*value),
                    _ => false,
                }
            }
        }
    }
}

/// What rules of one route may refer to.
pub struct RuleContext<'a> {
    /// The route's path parameters and the index of their segment.
    pub params: &'a [(&'a str, usize)],
}

fn expected(v: &toml::Value) -> Option<Expected> {
    match v {
        toml::Value::String(s) => Some(Expected::Text(s.as_str().into())),
        toml::Value::Integer(i) => Some(Expected::Text(i.to_string().into())),
        toml::Value::Float(f) => Some(Expected::Text(f.to_string().into())),
        toml::Value::Boolean(b) => Some(Expected::Bool(*b)),
        _ => None,
    }
}

const SCALAR: &str = "a string, a number or a boolean";
const OPERATORS: &str = "equals, one_of, contains, present";

fn one_of(list: &[toml::Value], at: &KeyPath) -> Result<Vec<Expected>, Invalid> {
    if list.is_empty() {
        return Err(Invalid::new(at.clone(), "an empty list is never met"));
    }
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            expected(v).ok_or_else(|| Invalid::new(at.index(i), format!("must be {SCALAR}")))
        })
        .collect()
}

/// The tests of one `claims` entry: a value, a list, or a table of operators.
fn claim_tests(value: &toml::Value, at: &KeyPath) -> Result<Vec<ClaimTest>, Invalid> {
    match value {
        toml::Value::Array(list) => Ok(vec![ClaimTest::OneOf(one_of(list, at)?)]),
        toml::Value::Table(ops) => {
            if ops.is_empty() {
                return Err(Invalid::new(
                    at.clone(),
                    format!("needs an operator: {OPERATORS}"),
                ));
            }
            let mut tests = Vec::new();
            for (op, v) in ops {
                let at = at.key(op);
                let scalar = || {
                    expected(v).ok_or_else(|| Invalid::new(at.clone(), format!("must be {SCALAR}")))
                };
                tests.push(match op.as_str() {
                    "equals" => ClaimTest::Equals(scalar()?),
                    "one_of" => match v {
                        toml::Value::Array(list) => ClaimTest::OneOf(one_of(list, &at)?),
                        _ => return Err(Invalid::new(at, "must be a list")),
                    },
                    "contains" => match scalar()? {
                        Expected::Text(t) => ClaimTest::Contains(t),
                        Expected::Bool(_) => {
                            return Err(Invalid::new(at, "must be a string or a number"))
                        }
                    },
                    "present" => match v {
                        toml::Value::Boolean(b) => ClaimTest::Present(*b),
                        _ => return Err(Invalid::new(at, "must be true or false")),
                    },
                    _ => {
                        let m = format!(
                            "unknown claim operator {op:?} (known: {OPERATORS}); a dotted claim \
                             path must be quoted, as in \"realm_access.roles\""
                        );
                        return Err(Invalid::new(at, m));
                    }
                });
            }
            Ok(tests)
        }
        v => Ok(vec![ClaimTest::Equals(expected(v).ok_or_else(|| {
            Invalid::new(
                at.clone(),
                format!("must be {SCALAR}, a list, or a table of operators"),
            )
        })?)]),
    }
}

fn networks(list: &[String], at: &KeyPath) -> Result<Vec<IpNet>, Invalid> {
    list.iter()
        .enumerate()
        .map(|(i, n)| {
            n.parse::<IpNet>()
                .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    Invalid::new(
                        at.index(i),
                        format!("{n:?} is not an address or a CIDR network"),
                    )
                })
        })
        .collect()
}

fn names(list: &[String]) -> Vec<Box<str>> {
    list.iter().map(|s| s.as_str().into()).collect()
}

/// The conditions of one rule, in the order they are cheapest to check.
pub(super) fn compile(
    conf: &RuleConf,
    at: &KeyPath,
    cx: &RuleContext<'_>,
    authenticator: &mut Authenticator,
) -> Result<Vec<Condition>, Invalid> {
    let mut conditions = Vec::new();
    if let Some(kind) = conf.caller {
        conditions.push(Condition::Caller(kind));
    }
    if !conf.from.is_empty() {
        conditions.push(Condition::From(networks(&conf.from, &at.key("from"))?));
    }
    if !conf.not_from.is_empty() {
        conditions.push(Condition::NotFrom(networks(
            &conf.not_from,
            &at.key("not_from"),
        )?));
    }
    if !conf.client_cert_subject.is_empty() {
        conditions.push(Condition::CertSubject(names(&conf.client_cert_subject)));
    }
    if !conf.roles.is_empty() {
        conditions.push(Condition::AnyRole(names(&conf.roles)));
    }
    if !conf.scopes.is_empty() {
        conditions.push(Condition::AllScopes(names(&conf.scopes)));
    }
    if !conf.clients.is_empty() {
        conditions.push(Condition::Client(names(&conf.clients)));
    }
    for (path, value) in &conf.claims {
        let at = at.key("claims").key(path);
        let slot = ClaimPath::parse(path)
            .map(|p| authenticator.claim_slot(p))
            .map_err(|e| Invalid::new(at.clone(), e))?;
        for test in claim_tests(value, &at)? {
            conditions.push(Condition::Claim(slot, test));
        }
    }
    for (key, claim) in &conf.matches {
        let at = at.key("match").key(key);
        let source =
            match key.strip_prefix("header:") {
                Some(name) => Source::Header(HeaderName::try_from(name).map_err(|_| {
                    Invalid::new(at.clone(), format!("{name:?} is not a header name"))
                })?),
                None => match cx.params.iter().find(|(p, _)| *p == key.as_str()) {
                    Some((_, i)) => Source::Param(*i),
                    None => {
                        let known: Vec<String> =
                            cx.params.iter().map(|(p, _)| format!("{{{p}}}")).collect();
                        let m = format!(
                        "the route's path has no parameter {{{key}}} (it has: {}); a header is \
                         written \"header:NAME\"",
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    );
                        return Err(Invalid::new(at, m));
                    }
                },
            };
        let path = claim.strip_prefix("claim:").ok_or_else(|| {
            Invalid::new(at.clone(), "must name a claim, as in \"claim:agency_id\"")
        })?;
        let slot = ClaimPath::parse(path)
            .map(|p| authenticator.claim_slot(p))
            .map_err(|e| Invalid::new(at.clone(), e))?;
        conditions.push(Condition::Match(source, slot));
    }
    Ok(conditions)
}
