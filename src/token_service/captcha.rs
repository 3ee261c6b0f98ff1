//! Captcha verification with the provider's server-side API. reCAPTCHA, hCaptcha and
//! Turnstile share it: a form POST of `secret`, `response` and `remoteip`, answered
//! `{"success": true|false, …}`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::authenticate::fetch;
use crate::config::secret::read_secret;
use crate::config::{CaptchaConf, FailMode, Invalid, KeyPath};
use crate::metrics;

/// What a verification found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    Human,
    NotHuman,
    /// The provider failed or did not answer in time; `open`: the token is issued anyway.
    Unverified {
        open: bool,
    },
}

pub struct Captcha {
    url: String,
    secret: String,
    field: String,
    timeout: Duration,
    on_error: FailMode,
}

#[derive(serde::Deserialize)]
struct Answer {
    success: bool,
}

impl Captcha {
    pub fn compile(
        conf: &CaptchaConf,
        at: &KeyPath,
        relative: &dyn Fn(&Path) -> PathBuf,
    ) -> Result<Self, Invalid> {
        let url = &conf.verify_url;
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || reqwest::Url::parse(url).is_err()
        {
            return Err(Invalid::new(
                at.key("verify_url"),
                "must be an http:// or https:// URL",
            ));
        }
        let fields = ("secret_file", "secret_env");
        let secret = match read_secret(
            conf.secret_file.as_deref(),
            conf.secret_env.as_deref(),
            at,
            fields,
            relative,
        )? {
            None => {
                return Err(Invalid::new(
                    at.key("secret_file"),
                    "set secret_file or secret_env: the provider needs the site secret",
                ))
            }
            Some((key, s)) => {
                String::from_utf8(s).map_err(|_| Invalid::new(key, "the secret is not UTF-8"))?
            }
        };
        if conf.response_field.is_empty() {
            return Err(Invalid::new(at.key("response_field"), "must not be empty"));
        }
        if conf.timeout.is_zero() {
            return Err(Invalid::new(at.key("timeout"), "must be more than 0s"));
        }
        Ok(Self {
            url: url.clone(),
            secret,
            field: conf.response_field.clone(),
            timeout: conf.timeout,
            on_error: conf.on_error,
        })
    }

    pub fn field(&self) -> &str {
        &self.field
    }

    /// Asks the provider whether `response` was solved by the visitor at `ip`.
    pub async fn verify(&self, response: &str, ip: IpAddr) -> Checked {
        let remote = ip.to_string();
        let form = [
            ("secret", self.secret.as_str()),
            ("response", response),
            ("remoteip", remote.as_str()),
        ];
        let call = async {
            let client = fetch::credentials_client().map_err(|e| e.to_string())?;
            let answer = client
                .post(&self.url)
                .header(http::header::ACCEPT, "application/json")
                .timeout(self.timeout)
                .form(&form)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let body = fetch::read_body(answer).await.map_err(|e| e.to_string())?;
            serde_json::from_slice::<Answer>(&body).map_err(|e| format!("answer: {e}"))
        };
        let checked = match call.await {
            Ok(Answer { success: true }) => Checked::Human,
            Ok(Answer { success: false }) => Checked::NotHuman,
            Err(e) => {
                log::warn!("token service: captcha verification failed: {e}");
                Checked::Unverified {
                    open: self.on_error == FailMode::FailOpen,
                }
            }
        };
        metrics::captcha_verification(match checked {
            Checked::Human => "human",
            Checked::NotHuman => "not_human",
            Checked::Unverified { .. } => "error",
        });
        checked
    }
}
