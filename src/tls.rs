//! Certificates and keys: read from PEM files and checked when the config is loaded, so a bad
//! file is a config error and never a failure on the first connection.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use pingora_core::listeners::tls::TlsSettings;
use pingora_core::protocols::tls::CaType;
use pingora_core::utils::tls::{CertKey, WrappedX509};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config::{ClientAuth, EdgeTlsConf, Invalid, KeyPath};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file, leaf first; each one must parse as X.509.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    for cert in &certs {
        X509Certificate::from_der(cert.as_ref())
            .map_err(|e| format!("{}: not an X.509 certificate: {e}", path.display()))?;
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("{}: {e}", path.display()))?
        .ok_or_else(|| format!("{}: no PEM private key in it", path.display()))
}

/// A chain and its key, checked to belong together.
fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = read_certs(cert)?;
    let key_der = read_key(key)?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("{} does not go with {}: {e}", key.display(), cert.display()))?;
    Ok(certified)
}

/// The client certificate the gateway presents to an upstream.
pub fn upstream_client_cert(cert: &Path, key: &Path) -> Result<Arc<CertKey>, String> {
    let certified = certified_key(cert, key)?;
    let key_der = read_key(key)?;
    // Checked non-empty and parsed by `certified_key`, so `CertKey::new` cannot panic.
    let chain = certified.cert.iter().map(|c| c.as_ref().to_vec()).collect();
    Ok(Arc::new(CertKey::new(chain, key_der.secret_der().to_vec())))
}

/// CAs an upstream's certificate must chain to.
pub fn upstream_ca(path: &Path) -> Result<Arc<CaType>, String> {
    let certs = read_certs(path)?;
    let wrapped: Vec<WrappedX509> = certs
        .into_iter()
        // Parsed successfully above, so pingora's parser cannot panic on them.
        .map(|c| WrappedX509::new(c.as_ref().to_vec(), pingora_core::utils::tls::parse_x509))
        .collect();
    Ok(Arc::from(wrapped.into_boxed_slice()))
}

/// Picks the certificate by SNI: exact names first, then `*.` wildcards one label deep, then
/// the first certificate.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        let found = self.exact.get(&name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        });
        Some(found.unwrap_or(&self.default).clone())
    }
}

fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// Compiled `[server.tls]`: ready to hand to the listeners.
#[derive(Clone)]
pub struct EdgeTls {
    resolver: Arc<SniResolver>,
    client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    http2: bool,
}

impl std::fmt::Debug for EdgeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeTls")
            .field("names", &self.resolver.exact.keys().collect::<Vec<_>>())
            .field("client_auth", &self.client_verifier.is_some())
            .field("http2", &self.http2)
            .finish()
    }
}

impl EdgeTls {
    /// Compiles `[server.tls]`, found at `at`. `relative` resolves paths against the config
    /// file's directory.
    pub fn compile(
        conf: &EdgeTlsConf,
        at: &KeyPath,
        relative: impl Fn(&Path) -> std::path::PathBuf,
    ) -> Result<Self, Invalid> {
        let tls_error = |field: &str, message: String| Invalid::new(at.key(field), message);
        let mut keys = Vec::new();
        for c in &conf.certificates {
            let key = certified_key(&relative(&c.cert_file), &relative(&c.key_file))
                .map_err(|e| tls_error("certificates", e))?;
            keys.push(Arc::new(key));
        }
        let Some(default) = keys.first().cloned() else {
            return Err(tls_error("certificates", "at least one is needed".into()));
        };
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for key in &keys {
            let Some(leaf) = key.cert.first() else {
                continue;
            };
            for name in dns_names(leaf) {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()),
                    None => exact.entry(name),
                }
                .or_insert_with(|| key.clone());
            }
        }
        let client_verifier = match (conf.client_auth, &conf.client_ca_file) {
            (ClientAuth::None, None) => None,
            (ClientAuth::None, Some(_)) => {
                return Err(tls_error(
                    "client_ca_file",
                    "set client_auth = \"optional\" or \"required\" to use it".into(),
                ))
            }
            (_, None) => {
                return Err(tls_error(
                    "client_ca_file",
                    "client certificates need the CAs they must chain to".into(),
                ))
            }
            (mode, Some(path)) => {
                let mut roots = RootCertStore::empty();
                for cert in
                    read_certs(&relative(path)).map_err(|e| tls_error("client_ca_file", e))?
                {
                    roots
                        .add(cert)
                        .map_err(|e| tls_error("client_ca_file", e.to_string()))?;
                }
                let builder =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let builder = if mode == ClientAuth::Optional {
                    builder.allow_unauthenticated()
                } else {
                    builder
                };
                Some(
                    builder
                        .build()
                        .map_err(|e| tls_error("client_ca_file", e.to_string()))?,
                )
            }
        };
        Ok(Self {
            resolver: Arc::new(SniResolver {
                exact,
                wildcard,
                default,
            }),
            client_verifier,
            http2: conf.http2,
        })
    }

    /// Listener settings: TLS 1.2 and 1.3, certificates by SNI, client certificates if asked.
    pub fn settings(&self) -> pingora_core::Result<TlsSettings> {
        let mut settings = match &self.client_verifier {
            Some(verifier) => {
                let mut s = TlsSettings::with_callbacks(Box::new(SubjectRecorder))?;
                s.set_client_cert_verifier(verifier.clone());
                s
            }
            None => TlsSettings::intermediate("", "")?,
        };
        settings.set_cert_resolver(self.resolver.clone());
        if self.http2 {
            settings.enable_h2();
        }
        Ok(settings)
    }
}

/// The verified client certificate of a downstream TLS connection, as the HTTP layer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// SHA-256 of the leaf certificate (DER), as RFC 8705 `x5t#S256` binds it.
    pub sha256: Vec<u8>,
    /// The leaf's subject as an RFC 4514 string, e.g. `CN=agent-7,O=Example`.
    pub subject: Option<Arc<str>>,
}

/// Records the client certificate's subject once per connection, at the end of the handshake,
/// so requests on that connection read it without parsing the certificate again.
struct SubjectRecorder;

#[async_trait::async_trait]
impl pingora_core::listeners::TlsAccept for SubjectRecorder {
    async fn handshake_complete_callback(
        &self,
        tls: &pingora_core::protocols::tls::TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let der = tls.peer_certificate_der()?;
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let subject: Arc<str> = rfc4514(cert.subject()).into();
        Some(Arc::new(subject))
    }
}

/// The subject read by [`SubjectRecorder`] from a connection's TLS digest.
pub fn recorded_subject(digest: &pingora_core::protocols::tls::SslDigest) -> Option<Arc<str>> {
    digest.extension.get::<Arc<str>>().cloned()
}

/// RFC 4514: RDNs last-to-first, separated by commas, with the special characters escaped.
/// Characters that cannot go in a header (controls) are hex-escaped, as RFC 4514 allows.
fn rfc4514(name: &x509_parser::x509::X509Name) -> String {
    use x509_parser::oid_registry as oids;
    // The names RFC 4514 section 3 defines; any other attribute is written as its OID.
    let names = [
        (oids::OID_X509_COMMON_NAME, "CN"),
        (oids::OID_X509_LOCALITY_NAME, "L"),
        (oids::OID_X509_STATE_OR_PROVINCE_NAME, "ST"),
        (oids::OID_X509_ORGANIZATION_NAME, "O"),
        (oids::OID_X509_ORGANIZATIONAL_UNIT, "OU"),
        (oids::OID_X509_COUNTRY_NAME, "C"),
        (oids::OID_X509_STREET_ADDRESS, "STREET"),
        (oids::OID_DOMAIN_COMPONENT, "DC"),
    ];
    let mut out = String::new();
    for (i, rdn) in name
        .iter()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = attr.attr_type();
            match names.iter().find(|(known, _)| known == oid) {
                Some((_, short)) => out.push_str(short),
                None => out.push_str(&oid.to_id_string()),
            }
            out.push('=');
            match attr.as_str() {
                Ok(value) => escape_value(value, &mut out),
                Err(_) => {
                    out.push('#');
                    for b in attr.attr_value().as_bytes() {
                        out.push_str(&format!("{b:02x}"));
                    }
                }
            }
        }
    }
    out
}

fn escape_value(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(value: &str) -> String {
        let mut out = String::new();
        escape_value(value, &mut out);
        out
    }

    #[test]
    fn attribute_values_are_escaped_as_rfc4514_says() {
        assert_eq!(escaped("agent-7"), "agent-7");
        assert_eq!(escaped("Acme, Inc."), "Acme\\, Inc.");
        assert_eq!(escaped("a+b=c;d"), "a\\+b=c\\;d");
        assert_eq!(escaped("#1 "), "\\#1\\ ");
        assert_eq!(escaped(" x"), "\\ x");
        assert_eq!(escaped("x\ny"), "x\\0ay");
        assert_eq!(escaped("José"), "José");
    }
}
