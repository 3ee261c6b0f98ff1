//! Secrets kept out of the config file: read from a file or an environment variable when the
//! config is compiled, so a missing one fails the check instead of a request.

use std::path::{Path, PathBuf};

use super::{Invalid, KeyPath};

/// A secret from a file (a trailing newline dropped) or an environment variable, with the key
/// it was read through; `None` when neither is set. `fields` names the two keys at `at`.
pub fn read_secret(
    file: Option<&Path>,
    env: Option<&str>,
    at: &KeyPath,
    (file_field, env_field): (&str, &str),
    relative: &dyn Fn(&Path) -> PathBuf,
) -> Result<Option<(KeyPath, Vec<u8>)>, Invalid> {
    let (file_key, env_key) = (at.key(file_field), at.key(env_field));
    match (file, env) {
        (Some(_), Some(_)) => {
            let message = format!("set {file_field} or {env_field}, not both");
            Err(Invalid::new(env_key, message))
        }
        (None, None) => Ok(None),
        (Some(file), None) => {
            let path = relative(file);
            match std::fs::read(&path) {
                Ok(secret) => Ok(Some((file_key, trim_newline(&secret).to_vec()))),
                Err(e) => Err(Invalid::new(file_key, format!("{}: {e}", path.display()))),
            }
        }
        (None, Some(var)) => match std::env::var(var) {
            Ok(secret) => Ok(Some((env_key, secret.into_bytes()))),
            Err(_) => Err(Invalid::new(
                env_key,
                format!("environment variable {var} is not set"),
            )),
        },
    }
}

/// A client secret, which must be set and be UTF-8 (it is sent in a form or a header).
pub fn client_secret(
    file: Option<&Path>,
    env: Option<&str>,
    at: &KeyPath,
    relative: &dyn Fn(&Path) -> PathBuf,
) -> Result<String, Invalid> {
    let fields = ("client_secret_file", "client_secret_env");
    match read_secret(file, env, at, fields, relative)? {
        None => Err(Invalid::new(
            at.key("client_secret_file"),
            "the gateway authenticates to the endpoint: set client_secret_file or \
             client_secret_env",
        )),
        Some((key, secret)) => String::from_utf8(secret)
            .map_err(|_| Invalid::new(key, "the client secret is not UTF-8")),
    }
}

fn trim_newline(secret: &[u8]) -> &[u8] {
    let secret = secret.strip_suffix(b"\n").unwrap_or(secret);
    secret.strip_suffix(b"\r").unwrap_or(secret)
}
