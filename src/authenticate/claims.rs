//! Reading identity out of a verified token's claims.

use serde_json::{Map, Value};

use crate::config::{ClaimsConf, RolesFormat};

/// A dot-separated claim path, split once at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath(Vec<Box<str>>);

impl ClaimPath {
    pub fn parse(path: &str) -> Result<Self, String> {
        let parts: Vec<Box<str>> = path.split('.').map(Into::into).collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("claim path {path:?} has an empty part"));
        }
        Ok(Self(parts))
    }

    fn from_parts(parts: &[&str]) -> Self {
        Self(parts.iter().map(|p| (*p).into()).collect())
    }

    pub fn get<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.0.split_first()?;
        rest.iter()
            .try_fold(claims.get(&**first)?, |v, part| v.as_object()?.get(&**part))
    }
}

/// Where one issuer puts identity in its tokens.
#[derive(Debug, Clone)]
pub struct ClaimMap {
    subject: ClaimPath,
    roles: Vec<ClaimPath>,
    roles_format: RolesFormat,
    scope: ClaimPath,
    tenant: Option<ClaimPath>,
    client_id: Vec<ClaimPath>,
}

/// Identity read from claims; the issuer and expiry are added by the caller.
pub struct Identity {
    pub subject: String,
    pub client_id: Option<String>,
    pub tenant: Option<String>,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
}

impl ClaimMap {
    pub fn compile(conf: &ClaimsConf) -> Result<Self, String> {
        let mut roles = conf
            .roles
            .iter()
            .map(|p| ClaimPath::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        // Client ids may contain dots, so they are not written as paths.
        for client in &conf.client_roles {
            roles.push(ClaimPath::from_parts(&["resource_access", client, "roles"]));
        }
        Ok(Self {
            subject: ClaimPath::parse(&conf.subject)?,
            roles,
            roles_format: conf.roles_format,
            scope: ClaimPath::parse(&conf.scope)?,
            tenant: conf.tenant.as_deref().map(ClaimPath::parse).transpose()?,
            client_id: conf
                .client_id
                .iter()
                .map(|p| ClaimPath::parse(p))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Reads the identity. A token without a string subject is refused: every decision and
    /// every upstream depends on it.
    pub fn read(&self, claims: &Map<String, Value>) -> Result<Identity, &'static str> {
        let subject = match self.subject.get(claims) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err("subject claim missing or not a string"),
        };
        let mut roles = Vec::new();
        for path in &self.roles {
            match (path.get(claims), self.roles_format) {
                (None | Some(Value::Null), _) => {}
                (Some(Value::String(s)), RolesFormat::SpaceSeparated) => {
                    roles.extend(s.split_ascii_whitespace().map(String::from));
                }
                (Some(Value::Array(items)), RolesFormat::Array) => {
                    strings(items, &mut roles).ok_or("roles claim holds more than strings")?;
                }
                (Some(_), RolesFormat::Array) => return Err("roles claim is not an array"),
                (Some(_), RolesFormat::SpaceSeparated) => {
                    return Err("roles claim is not a string")
                }
            }
        }
        // RFC 8693 §4.2: a space-separated string; some providers send an array instead.
        let mut scopes = Vec::new();
        match self.scope.get(claims) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => scopes.extend(s.split_ascii_whitespace().map(String::from)),
            Some(Value::Array(items)) => {
                strings(items, &mut scopes).ok_or("scope claim holds more than strings")?;
            }
            Some(_) => return Err("scope claim is neither a string nor an array"),
        }
        Ok(Identity {
            subject,
            client_id: self.client_id.iter().find_map(|p| scalar(p.get(claims))),
            tenant: self.tenant.as_ref().and_then(|p| scalar(p.get(claims))),
            roles,
            scopes,
        })
    }
}

/// Appends every item, if every item is a string.
fn strings(items: &[Value], out: &mut Vec<String>) -> Option<()> {
    for item in items {
        out.push(item.as_str()?.to_string());
    }
    Some(())
}

/// A string or number claim as text; empty strings count as absent.
pub(super) fn scalar(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A claim as [`super::ClaimValue`]: strings and numbers as text, booleans, arrays of them.
pub(super) fn value(value: Option<&Value>) -> super::ClaimValue {
    use super::ClaimValue;
    match value {
        Some(Value::Bool(b)) => ClaimValue::Bool(*b),
        Some(Value::Array(items)) => ClaimValue::List(
            items
                .iter()
                .filter_map(|v| scalar(Some(v)))
                .map(Into::into)
                .collect(),
        ),
        v => scalar(v).map_or(ClaimValue::Absent, |t| ClaimValue::Text(t.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn keycloak_layout_is_read_by_default() {
        let conf = ClaimsConf {
            client_roles: vec!["agent-manager".into()],
            tenant: Some("agency.id".into()),
            ..Default::default()
        };
        let map = ClaimMap::compile(&conf).unwrap();
        let id = map
            .read(&claims(json!({
                "sub": "u1",
                "azp": "portal",
                "scope": "openid agents:read",
                "agency": {"id": 42},
                "realm_access": {"roles": ["agent"]},
                "resource_access": {"agent-manager": {"roles": ["supervisor"]}, "other": {"roles": ["admin"]}},
                "groups": ["/ops"]
            })))
            .unwrap();
        assert_eq!(id.subject, "u1");
        assert_eq!(id.client_id.as_deref(), Some("portal"));
        assert_eq!(id.tenant.as_deref(), Some("42"));
        assert_eq!(id.roles, ["agent", "/ops", "supervisor"]);
        assert_eq!(id.scopes, ["openid", "agents:read"]);
    }

    #[test]
    fn a_roles_claim_of_another_shape_is_refused_not_guessed() {
        let map = ClaimMap::compile(&ClaimsConf::default()).unwrap();
        let read = |v: Value| map.read(&claims(v)).map(|id| id.roles);
        assert_eq!(
            read(json!({"sub": "u", "groups": ["a", "b"]})),
            Ok(vec!["a".into(), "b".into()])
        );
        assert_eq!(read(json!({"sub": "u", "groups": null})), Ok(vec![]));
        assert!(read(json!({"sub": "u", "groups": "admin"})).is_err());
        assert!(read(json!({"sub": "u", "groups": ["a", 7]})).is_err());
        assert!(read(json!({"sub": "u", "realm_access": {"roles": {"admin": true}}})).is_err());
        assert!(read(json!({"sub": "u", "scope": 5})).is_err());
        assert!(read(json!({"sub": "u", "scope": ["a", "b"]})).is_ok());

        let spaced = ClaimsConf {
            roles: vec!["roles".into()],
            roles_format: RolesFormat::SpaceSeparated,
            ..Default::default()
        };
        let map = ClaimMap::compile(&spaced).unwrap();
        let id = map
            .read(&claims(json!({"sub": "u", "roles": "agent  supervisor"})))
            .unwrap();
        assert_eq!(id.roles, ["agent", "supervisor"]);
        assert!(map
            .read(&claims(json!({"sub": "u", "roles": ["agent"]})))
            .is_err());
    }

    #[test]
    fn subject_is_required() {
        let map = ClaimMap::compile(&ClaimsConf::default()).unwrap();
        assert!(map.read(&claims(json!({"sub": 5}))).is_err());
        assert!(map.read(&claims(json!({}))).is_err());
    }
}
