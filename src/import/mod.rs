//! Migration from other gateways: their configuration in, a commented Portcullis config out.
//! What cannot be carried over is said in the output, next to what it concerns.

pub mod apisix;
mod toml_out;

/// A translated config.
#[derive(Debug)]
pub struct Imported {
    /// The Portcullis config, with comments.
    pub toml: String,
    /// What was not translated, one line each (also in `toml` as comments).
    pub untranslated: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Syntax(String),
    #[error("{0}")]
    Shape(String),
}
