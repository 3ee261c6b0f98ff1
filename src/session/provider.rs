//! The provider side of a login: its endpoints (from discovery), the token endpoint (code
//! exchange and refresh, with the client's credentials), and the checks of ID tokens
//! (OpenID Connect Core §3.1.3.7) and logout tokens (Back-Channel Logout 1.0 §2.6).

use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine;
use http::header::{ACCEPT, AUTHORIZATION};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Digest as _;

use crate::authenticate::{fetch, AuthError, Authenticator, IssuerId};
use crate::clock;
use crate::config::{AssertionAlgorithm, SessionAuthMethod};

/// The event a logout token carries.
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Logout tokens issued longer ago than this are refused.
pub const LOGOUT_TOKEN_MAX_AGE: Duration = Duration::from_secs(300);

/// Where the provider takes the browser and the gateway's calls.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub authorization: String,
    pub token: String,
    pub end_session: Option<String>,
}

/// How the gateway proves it is the client.
pub enum ClientAuth {
    Basic(String),
    Post(String),
    /// A signed assertion (RFC 7523 §2.2) with this key.
    PrivateKeyJwt {
        key: jsonwebtoken::EncodingKey,
        algorithm: jsonwebtoken::Algorithm,
        kid: Option<String>,
    },
}

impl ClientAuth {
    pub fn new(
        method: SessionAuthMethod,
        secret: Option<String>,
        key_pem: Option<&[u8]>,
        algorithm: AssertionAlgorithm,
        kid: Option<String>,
    ) -> Result<ClientAuth, String> {
        Ok(match method {
            SessionAuthMethod::ClientSecretBasic => ClientAuth::Basic(secret.ok_or("no secret")?),
            SessionAuthMethod::ClientSecretPost => ClientAuth::Post(secret.ok_or("no secret")?),
            SessionAuthMethod::PrivateKeyJwt => {
                let pem = key_pem.ok_or("no private key")?;
                let (key, algorithm) = match algorithm {
                    AssertionAlgorithm::RS256 => (
                        jsonwebtoken::EncodingKey::from_rsa_pem(pem),
                        jsonwebtoken::Algorithm::RS256,
                    ),
                    AssertionAlgorithm::ES256 => (
                        jsonwebtoken::EncodingKey::from_ec_pem(pem),
                        jsonwebtoken::Algorithm::ES256,
                    ),
                };
                let key = key.map_err(|e| format!("not a {algorithm:?} private key: {e}"))?;
                ClientAuth::PrivateKeyJwt {
                    key,
                    algorithm,
                    kid,
                }
            }
        })
    }
}

/// The provider as one login client sees it.
pub struct Provider {
    pub issuer: IssuerId,
    pub client_id: String,
    auth: ClientAuth,
    discovery_url: String,
    endpoints: ArcSwapOption<Endpoints>,
    fetching: tokio::sync::Mutex<()>,
    pub timeout: Duration,
}

/// What the token endpoint answered (no `Debug`: it is all secrets).
#[derive(Deserialize)]
pub struct Tokens {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: Option<u64>,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
}

/// Why a call to the provider gave no tokens.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The grant is not (or no longer) good: the session cannot go on.
    #[error("refused: {0}")]
    Refused(String),
    /// The provider could not be asked; it may work later.
    #[error("{0}")]
    Failed(String),
}

/// Why an ID token or a logout token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefused {
    #[error("{0}")]
    Signature(AuthError),
    #[error("{0}")]
    Claim(&'static str),
}

impl Provider {
    pub fn new(
        issuer: IssuerId,
        client_id: String,
        auth: ClientAuth,
        discovery_url: String,
        timeout: Duration,
    ) -> Provider {
        Provider {
            issuer,
            client_id,
            auth,
            discovery_url,
            endpoints: ArcSwapOption::empty(),
            fetching: tokio::sync::Mutex::new(()),
            timeout,
        }
    }

    /// The endpoints, from the discovery document the first time they are needed.
    pub async fn endpoints(&self, iss: &str) -> Result<std::sync::Arc<Endpoints>, CallError> {
        if let Some(e) = self.endpoints.load_full() {
            return Ok(e);
        }
        let _turn = self.fetching.lock().await;
        if let Some(e) = self.endpoints.load_full() {
            return Ok(e);
        }
        let failed = |e: &dyn std::fmt::Display| CallError::Failed(format!("discovery: {e}"));
        let (body, _) = fetch::get(&self.discovery_url, self.timeout)
            .await
            .map_err(|e| failed(&e))?;
        let doc: Value = serde_json::from_slice(&body).map_err(|e| failed(&e))?;
        if doc.get("issuer").and_then(Value::as_str) != Some(iss) {
            return Err(failed(&format!("the document's issuer is not {iss:?}")));
        }
        let field = |name: &str| doc.get(name).and_then(Value::as_str).map(str::to_owned);
        let endpoints = std::sync::Arc::new(Endpoints {
            authorization: field("authorization_endpoint")
                .ok_or_else(|| failed(&"no authorization_endpoint"))?,
            token: field("token_endpoint").ok_or_else(|| failed(&"no token_endpoint"))?,
            end_session: field("end_session_endpoint"),
        });
        self.endpoints.store(Some(endpoints.clone()));
        Ok(endpoints)
    }

    /// Exchanges an authorization code (RFC 6749 §4.1.3, with the PKCE verifier).
    pub async fn redeem(
        &self,
        token_endpoint: &str,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<Tokens, CallError> {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        self.call(token_endpoint, &form).await
    }

    /// Refreshes (RFC 6749 §6).
    pub async fn refresh(
        &self,
        token_endpoint: &str,
        refresh_token: &str,
    ) -> Result<Tokens, CallError> {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        self.call(token_endpoint, &form).await
    }

    async fn call(&self, endpoint: &str, form: &[(&str, &str)]) -> Result<Tokens, CallError> {
        let failed = |e: &dyn std::fmt::Display| CallError::Failed(e.to_string());
        let mut form: Vec<(&str, &str)> = form.to_vec();
        let mut request = fetch::credentials_client()
            .map_err(|e| failed(&e))?
            .post(endpoint)
            .header(ACCEPT, "application/json")
            .timeout(self.timeout);
        let assertion;
        match &self.auth {
            ClientAuth::Basic(secret) => {
                request = request.header(
                    AUTHORIZATION,
                    fetch::basic_credentials(&self.client_id, secret),
                );
            }
            ClientAuth::Post(secret) => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", secret));
            }
            ClientAuth::PrivateKeyJwt {
                key,
                algorithm,
                kid,
            } => {
                assertion = self.assertion(endpoint, key, *algorithm, kid.clone())?;
                form.push(("client_id", &self.client_id));
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
                form.push(("client_assertion", &assertion));
            }
        }
        let (status, body) = fetch::answer_of(request.form(&form))
            .await
            .map_err(|e| failed(&e))?;
        if status.is_success() {
            let tokens: Tokens =
                serde_json::from_slice(&body).map_err(|e| failed(&format!("answer: {e}")))?;
            if !tokens.token_type.eq_ignore_ascii_case("bearer") || tokens.access_token.is_empty() {
                return Err(failed(&"the answer has no Bearer access token"));
            }
            return Ok(tokens);
        }
        let error = fetch::oauth_error(&body);
        let why = format!("HTTP {status}, error {}", error.as_deref().unwrap_or("-"));
        // RFC 6749 §5.2: a grant or a client the provider no longer takes.
        let refused = matches!(status.as_u16(), 400 | 401)
            && matches!(
                error.as_deref(),
                Some("invalid_grant" | "invalid_client" | "unauthorized_client")
            );
        Err(if refused {
            CallError::Refused(why)
        } else {
            CallError::Failed(why)
        })
    }

    /// A client assertion for one call to `audience` (RFC 7523 §3).
    fn assertion(
        &self,
        audience: &str,
        key: &jsonwebtoken::EncodingKey,
        algorithm: jsonwebtoken::Algorithm,
        kid: Option<String>,
    ) -> Result<String, CallError> {
        let now = clock::unix_secs();
        let jti = super::seal::random_id().map_err(|e| CallError::Failed(e.into()))?;
        let claims = serde_json::json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,
            "jti": jti,
            "iat": now,
            "exp": now + 60,
        });
        let mut header = jsonwebtoken::Header::new(algorithm);
        header.kid = kid;
        jsonwebtoken::encode(&header, &claims, key)
            .map_err(|e| CallError::Failed(format!("client assertion: {e}")))
    }

    /// An ID token's claims, checked against this client and the login's `nonce`.
    pub async fn check_id_token(
        &self,
        authenticator: &Authenticator,
        token: &str,
        nonce: &str,
    ) -> Result<Map<String, Value>, TokenRefused> {
        let (_, claims) = authenticator
            .verify_signed(self.issuer, token)
            .await
            .map_err(TokenRefused::Signature)?;
        let (_, leeway) = authenticator.issuer_of(self.issuer);
        let now = clock::unix_secs();
        self.check_audience(&claims)?;
        match number(&claims, "exp") {
            Some(exp) if now <= exp.saturating_add(leeway) => {}
            Some(_) => return Err(TokenRefused::Claim("the ID token has expired")),
            None => return Err(TokenRefused::Claim("the ID token has no exp")),
        }
        if number(&claims, "iat").is_none_or(|iat| iat > now.saturating_add(leeway)) {
            return Err(TokenRefused::Claim(
                "the ID token's iat is missing or in the future",
            ));
        }
        let presented = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), nonce.as_bytes()) {
            return Err(TokenRefused::Claim(
                "the ID token's nonce is not the login's",
            ));
        }
        if claims
            .get("sub")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(TokenRefused::Claim("the ID token has no sub"));
        }
        Ok(claims)
    }

    /// `aud` names this client; with other audiences too, `azp` must be this client.
    fn check_audience(&self, claims: &Map<String, Value>) -> Result<(), TokenRefused> {
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !audiences.contains(&self.client_id.as_str()) {
            return Err(TokenRefused::Claim(
                "the token is not for this client (aud)",
            ));
        }
        match claims.get("azp").and_then(Value::as_str) {
            Some(azp) if azp != self.client_id => {
                Err(TokenRefused::Claim("the token is for another party (azp)"))
            }
            None if audiences.len() > 1 => Err(TokenRefused::Claim(
                "a token for several audiences needs azp",
            )),
            _ => Ok(()),
        }
    }

    /// A logout token's subject and provider session, once every check of §2.6 held. The
    /// `jti` replay check is the caller's.
    pub async fn check_logout_token(
        &self,
        authenticator: &Authenticator,
        token: &str,
    ) -> Result<LogoutClaims, TokenRefused> {
        let (typ, claims) = authenticator
            .verify_signed(self.issuer, token)
            .await
            .map_err(TokenRefused::Signature)?;
        if typ.is_some_and(|t| !t.eq_ignore_ascii_case("logout+jwt")) {
            return Err(TokenRefused::Claim("typ is not logout+jwt"));
        }
        self.check_audience(&claims)?;
        let (_, leeway) = authenticator.issuer_of(self.issuer);
        let now = clock::unix_secs();
        let Some(iat) = number(&claims, "iat") else {
            return Err(TokenRefused::Claim("no iat"));
        };
        if iat > now.saturating_add(leeway)
            || iat.saturating_add(LOGOUT_TOKEN_MAX_AGE.as_secs() + leeway) < now
        {
            return Err(TokenRefused::Claim("iat is too far from now"));
        }
        if number(&claims, "exp").is_some_and(|exp| now > exp.saturating_add(leeway)) {
            return Err(TokenRefused::Claim("the logout token has expired"));
        }
        let event = claims
            .get("events")
            .and_then(Value::as_object)
            .and_then(|events| events.get(BACKCHANNEL_EVENT));
        if !event.is_some_and(Value::is_object) {
            return Err(TokenRefused::Claim("no back-channel logout event"));
        }
        if claims.contains_key("nonce") {
            return Err(TokenRefused::Claim("a logout token has no nonce"));
        }
        let text = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty() && s.len() <= 1024)
                .map(str::to_owned)
        };
        let Some(jti) = text("jti") else {
            return Err(TokenRefused::Claim("no jti"));
        };
        let (sub, sid) = (text("sub"), text("sid"));
        if sub.is_none() && sid.is_none() {
            return Err(TokenRefused::Claim("neither sub nor sid"));
        }
        Ok(LogoutClaims { jti, sub, sid })
    }
}

/// What a logout token ends.
#[derive(Debug)]
pub struct LogoutClaims {
    pub jti: String,
    pub sub: Option<String>,
    pub sid: Option<String>,
}

fn number(claims: &Map<String, Value>, name: &str) -> Option<u64> {
    claims
        .get(name)
        .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)))
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The PKCE challenge of a verifier (RFC 7636 §4.2, S256).
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// When a JWT expires by its own `exp`, read without verification (the gateway verifies the
/// access token as a bearer token before using it).
pub fn unverified_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    number(&claims, "exp")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authenticate::{Issuer, IssuerContext};
    use crate::config::{IssuerConf, KeyPath};
    use crate::token::{self, TokenSpec};

    const ISS: &str = "https://idp.test";

    fn dev(file: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("conf/dev")
            .join(file)
    }

    /// The provider `gw` sees, trusting the development key.
    fn provider() -> (Authenticator, Provider) {
        let text = format!(
            "issuer = \"{ISS}\"\naudiences = [\"api\"]\njwks_file = \"{}\"",
            dev("jwks.json").display()
        );
        let conf: IssuerConf = toml::from_str(&text).expect("issuer table");
        let relative = |p: &std::path::Path| p.to_path_buf();
        let cx = IssuerContext {
            relative: &relative,
            previous: None,
        };
        let issuer = Issuer::compile("idp", &conf, &KeyPath::root(), &cx).expect("issuer");
        let mut authenticator = Authenticator::default();
        let id = authenticator.add(issuer).expect("added");
        let auth = ClientAuth::Basic("s".into());
        let provider = Provider::new(id, "gw".into(), auth, String::new(), Duration::from_secs(1));
        (authenticator, provider)
    }

    fn signed(typ: &str, ttl: Option<u64>, issued_ago: u64, claims: &[&str]) -> String {
        let key = token::load_key(&dev("private-key.pem"), jsonwebtoken::Algorithm::RS256)
            .expect("dev key");
        let spec = TokenSpec {
            alg: jsonwebtoken::Algorithm::RS256,
            kid: Some("dev-1".into()),
            typ: typ.into(),
            issuer: ISS.into(),
            audience: vec!["gw".into()],
            subject: "alice".into(),
            roles: Vec::new(),
            scope: None,
            azp: None,
            ttl: ttl.map(Duration::from_secs),
            issued_ago: Duration::from_secs(issued_ago),
            not_before_in: None,
            claims: claims.iter().map(|c| c.to_string()).collect(),
        };
        token::mint(&key, &spec).expect("mint")
    }

    const EVENT: &str = r#"events={"http://schemas.openid.net/event/backchannel-logout": {}}"#;

    #[tokio::test]
    async fn logout_tokens_are_checked_as_back_channel_logout_1_0_says() {
        let (authenticator, provider) = provider();
        let check = |token: String| {
            let (a, p) = (&authenticator, &provider);
            async move { p.check_logout_token(a, &token).await }
        };
        let good = check(signed("logout+jwt", Some(120), 0, &[EVENT, "sid=s-1"]))
            .await
            .expect("a good logout token");
        assert_eq!(good.sid.as_deref(), Some("s-1"));
        assert_eq!(good.sub.as_deref(), Some("alice"));
        let refused = [
            (
                signed("JWT", Some(120), 0, &[EVENT]),
                "typ is not logout+jwt",
            ),
            (
                signed("logout+jwt", Some(120), 0, &[]),
                "no back-channel logout event",
            ),
            (
                signed("logout+jwt", Some(120), 0, &[r#"events={"other": {}}"#]),
                "no back-channel logout event",
            ),
            (
                signed("logout+jwt", Some(120), 0, &[EVENT, "nonce=n"]),
                "a logout token has no nonce",
            ),
            (
                signed("logout+jwt", Some(900), 600, &[EVENT]),
                "iat is too far from now",
            ),
            (
                signed("logout+jwt", Some(120), 0, &[EVENT, "aud=other"]),
                "the token is not for this client (aud)",
            ),
            (
                signed(
                    "logout+jwt",
                    Some(120),
                    0,
                    &[EVENT, "iss=https://evil.test"],
                ),
                "unknown issuer",
            ),
        ];
        for (token, why) in refused {
            let e = check(token).await.expect_err(why);
            assert_eq!(e.to_string(), why);
        }
    }

    #[tokio::test]
    async fn id_tokens_must_carry_the_logins_nonce() {
        let (authenticator, provider) = provider();
        let token = signed("JWT", Some(300), 0, &["nonce=n-1"]);
        assert!(provider
            .check_id_token(&authenticator, &token, "n-1")
            .await
            .is_ok());
        let e = provider
            .check_id_token(&authenticator, &token, "n-2")
            .await
            .expect_err("another login's nonce");
        assert_eq!(e.to_string(), "the ID token's nonce is not the login's");
        let expired = signed("JWT", Some(60), 600, &["nonce=n-1"]);
        assert!(provider
            .check_id_token(&authenticator, &expired, "n-1")
            .await
            .is_err());
    }

    #[test]
    fn pkce_matches_rfc_7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn audiences_must_name_the_client() {
        let (_, p) = provider();
        let claims = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert!(p
            .check_audience(&claims(serde_json::json!({"aud": "gw"})))
            .is_ok());
        assert!(p
            .check_audience(&claims(serde_json::json!({"aud": "other"})))
            .is_err());
        assert!(p
            .check_audience(&claims(serde_json::json!({"aud": ["gw", "x"]})))
            .is_err());
        assert!(p
            .check_audience(&claims(
                serde_json::json!({"aud": ["gw", "x"], "azp": "gw"})
            ))
            .is_ok());
        assert!(p
            .check_audience(&claims(serde_json::json!({"aud": "gw", "azp": "x"})))
            .is_err());
    }
}
