//! Identity forwarding: the verified principal, in request headers, to the upstream.

use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use pingora_http::RequestHeader;

use crate::authenticate::{Headers, Principal};
use crate::config::{IdentityHeadersConf, Invalid, KeyPath};
use crate::tls::ClientCert;

/// A claim that cannot be written as a header value (it holds control characters).
#[derive(Debug, thiserror::Error)]
#[error("claim for header {0} is not a valid header value")]
pub struct UnrepresentableClaim(pub HeaderName);

#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    subject: Option<HeaderName>,
    roles: Option<HeaderName>,
    scopes: Option<HeaderName>,
    tenant: Option<HeaderName>,
    client_id: Option<HeaderName>,
    issuer: Option<HeaderName>,
    client_cert: Option<HeaderName>,
    client_cert_subject: Option<HeaderName>,
    /// Everything removed from client requests: the names above and `strip`.
    strip: Vec<HeaderName>,
    forward_authorization: bool,
    /// Tells the headers rendered by this config from those of any other (see
    /// [`crate::authenticate::Derived`]).
    tag: u64,
}

impl IdentityHeaders {
    /// Compiles `[identity_headers]`, found at `at`.
    pub fn compile(conf: &IdentityHeadersConf, at: &KeyPath) -> Result<Self, Invalid> {
        let name = |key: &str, value: &str| -> Result<Option<HeaderName>, Invalid> {
            if value.is_empty() {
                return Ok(None);
            }
            HeaderName::from_bytes(value.as_bytes())
                .map(Some)
                .map_err(|_| Invalid::new(at.key(key), format!("{value:?} is not a header name")))
        };
        let subject = name("subject", &conf.subject)?;
        let roles = name("roles", &conf.roles)?;
        let scopes = name("scopes", &conf.scopes)?;
        let tenant = name("tenant", &conf.tenant)?;
        let client_id = name("client_id", &conf.client_id)?;
        let issuer = name("issuer", &conf.issuer)?;
        let client_cert = name("client_cert_sha256", &conf.client_cert_sha256)?;
        let client_cert_subject = name("client_cert_subject", &conf.client_cert_subject)?;
        let mut strip: Vec<HeaderName> = [
            &subject,
            &roles,
            &scopes,
            &tenant,
            &client_id,
            &issuer,
            &client_cert,
            &client_cert_subject,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        for extra in &conf.strip {
            strip.extend(name("strip", extra)?);
        }
        Ok(Self {
            subject,
            roles,
            scopes,
            tenant,
            client_id,
            issuer,
            client_cert,
            client_cert_subject,
            strip,
            forward_authorization: conf.forward_authorization,
            tag: {
                static COMPILED: AtomicU64 = AtomicU64::new(0);
                COMPILED.fetch_add(1, Ordering::Relaxed)
            },
        })
    }

    /// Renders a principal's headers. Done before the request is admitted, so a claim that
    /// cannot be a header value is a 401 rather than a failed proxy attempt. A principal
    /// remembered with its token is rendered once.
    pub fn render(&self, p: &Principal) -> Result<IdentityValues, UnrepresentableClaim> {
        p.derived
            .headers(self.tag, || self.render_afresh(p))
            .map(IdentityValues)
    }

    fn render_afresh(&self, p: &Principal) -> Result<Headers, UnrepresentableClaim> {
        let fields = [
            (&self.subject, Some(p.subject.clone())),
            (&self.roles, Some(p.roles.join(","))),
            (&self.scopes, Some(p.scopes.join(" "))),
            (&self.tenant, p.tenant.clone()),
            (&self.client_id, p.client_id.clone()),
            (&self.issuer, Some(p.issuer.to_string())),
        ];
        let mut values = Vec::with_capacity(fields.len());
        for (name, value) in fields {
            if let (Some(name), Some(value)) = (name, value) {
                // from_bytes admits UTF-8 (obs-text), so "José" passes; control characters do not.
                let value = HeaderValue::from_bytes(value.as_bytes())
                    .map_err(|_| UnrepresentableClaim(name.clone()))?;
                values.push((name.clone(), value));
            }
        }
        Ok(values.into())
    }

    /// Prepares an upstream request: removes every client-sent identity header, then sets the
    /// verified ones, if any, and the verified client certificate's SHA-256 and subject.
    pub fn apply(
        &self,
        req: &mut RequestHeader,
        identity: Option<&IdentityValues>,
        client_cert: Option<&ClientCert>,
    ) -> pingora_core::Result<()> {
        for name in &self.strip {
            req.remove_header(name);
        }
        if !self.forward_authorization {
            req.remove_header(&AUTHORIZATION);
        }
        for (name, value) in identity.map(IdentityValues::headers).unwrap_or_default() {
            req.insert_header(name.clone(), value.clone())?;
        }
        let Some(cert) = client_cert else {
            return Ok(());
        };
        if let Some(name) = &self.client_cert {
            let hex: String = cert.sha256.iter().map(|b| format!("{b:02x}")).collect();
            req.insert_header(name.clone(), hex)?;
        }
        if let (Some(name), Some(subject)) = (&self.client_cert_subject, &cert.subject) {
            // Control characters were escaped when the subject was recorded.
            if let Ok(value) = HeaderValue::from_bytes(subject.as_bytes()) {
                req.insert_header(name.clone(), value)?;
            }
        }
        Ok(())
    }
}

/// Identity headers rendered for a principal.
#[derive(Debug, Clone)]
pub struct IdentityValues(Headers);

impl IdentityValues {
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(subject: &str) -> Principal {
        Principal {
            issuer: "kc".into(),
            kind: crate::authenticate::PrincipalKind::User,
            subject: subject.into(),
            client_id: Some("portal".into()),
            tenant: None,
            roles: vec!["agent".into(), "admin".into()],
            scopes: vec![],
            valid_until: None,
            extra: Vec::new(),
            derived: Default::default(),
        }
    }

    #[test]
    fn forged_headers_are_replaced_or_removed() {
        let ids =
            IdentityHeaders::compile(&IdentityHeadersConf::default(), &KeyPath::root()).unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-user-id", "admin").unwrap();
        req.insert_header("X-Tenant-Id", "other").unwrap();
        let values = ids.render(&principal("alice")).unwrap();
        ids.apply(&mut req, Some(&values), None).unwrap();
        assert_eq!(req.headers.get("x-user-id").unwrap(), "alice");
        assert_eq!(req.headers.get("x-user-roles").unwrap(), "agent,admin");
        assert_eq!(req.headers.get("x-client-id").unwrap(), "portal");
        assert!(req.headers.get("x-tenant-id").is_none());

        let mut public = RequestHeader::build("GET", b"/", None).unwrap();
        public.insert_header("x-user-id", "admin").unwrap();
        ids.apply(&mut public, None, None).unwrap();
        assert!(public.headers.get("x-user-id").is_none());
    }

    #[test]
    fn a_principal_is_rendered_once_per_config() {
        let conf = IdentityHeadersConf::default();
        let ids = IdentityHeaders::compile(&conf, &KeyPath::root()).unwrap();
        let p = principal("alice");
        let first = ids.render(&p).unwrap();
        assert!(std::sync::Arc::ptr_eq(&first.0, &ids.render(&p).unwrap().0));
        // A reloaded config that names the headers otherwise renders its own.
        let renamed = IdentityHeadersConf {
            subject: "x-subject".into(),
            ..conf
        };
        let other = IdentityHeaders::compile(&renamed, &KeyPath::root()).unwrap();
        assert_eq!(other.render(&p).unwrap().headers()[0].0, "x-subject");
        assert_eq!(ids.render(&p).unwrap().headers()[0].0, "x-user-id");
    }

    #[test]
    fn control_characters_in_claims_are_refused() {
        let ids =
            IdentityHeaders::compile(&IdentityHeadersConf::default(), &KeyPath::root()).unwrap();
        assert!(ids.render(&principal("a\r\nx-admin: 1")).is_err());
        assert!(ids.render(&principal("José")).is_ok());
    }
}
