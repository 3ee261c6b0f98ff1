//! Writing TOML by hand, to keep comments beside the keys they explain.

use std::fmt::Write;

/// A TOML string literal.
pub fn string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// An array of strings.
pub fn strings<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| string(s.as_ref())).collect();
    format!("[{}]", quoted.join(", "))
}

/// A key, bare when TOML allows it.
pub fn key(s: &str) -> String {
    let bare = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare {
        s.to_string()
    } else {
        string(s)
    }
}

/// A TOML document being written.
#[derive(Default)]
pub struct Doc(pub String);

impl Doc {
    pub fn line(&mut self, text: impl AsRef<str>) {
        self.0.push_str(text.as_ref());
        self.0.push('\n');
    }

    pub fn blank(&mut self) {
        if !self.0.is_empty() && !self.0.ends_with("\n\n") {
            self.0.push('\n');
        }
    }

    pub fn comment(&mut self, text: impl AsRef<str>) {
        for l in text.as_ref().lines() {
            if l.is_empty() {
                self.0.push_str("#\n");
            } else {
                let _ = writeln!(self.0, "# {l}");
            }
        }
    }

    pub fn set(&mut self, k: &str, value: impl AsRef<str>) {
        let _ = writeln!(self.0, "{} = {}", key(k), value.as_ref());
    }
}

/// A whole number of seconds or milliseconds, as humantime writes it.
pub fn seconds(secs: f64) -> String {
    if secs.fract() == 0.0 {
        string(&format!("{}s", secs as u64))
    } else {
        string(&format!("{}ms", (secs * 1000.0).round() as u64))
    }
}
