//! What is worked out from a principal once and kept with it, for all the requests its token
//! makes while it is remembered.

use std::sync::{Arc, OnceLock};

use http::header::{HeaderName, HeaderValue};

/// What is worked out from a principal once (see [`super::Principal::derived`]). A clone starts
/// empty, since it may be changed into another principal.
#[derive(Debug, Default)]
pub struct Derived {
    /// Headers, with the tag of what made them: a maker with another tag (another config's)
    /// does not take them.
    headers: OnceLock<(u64, Headers)>,
    token_sha256: OnceLock<[u8; 32]>,
}

/// Header names and values, shared.
pub type Headers = Arc<[(HeaderName, HeaderValue)]>;

impl Clone for Derived {
    fn clone(&self) -> Self {
        Derived::default()
    }
}

impl Derived {
    /// The headers `tag` made before, or what `render` makes now (kept, if nothing was).
    pub fn headers<E>(
        &self,
        tag: u64,
        render: impl FnOnce() -> Result<Headers, E>,
    ) -> Result<Headers, E> {
        match self.headers.get() {
            Some((t, headers)) if *t == tag => Ok(headers.clone()),
            Some(_) => render(),
            None => {
                let headers = render()?;
                // Another request may have made them meanwhile: the same headers.
                let _ = self.headers.set((tag, headers.clone()));
                Ok(headers)
            }
        }
    }
    /// The SHA-256 of the principal's token, as `digest` works it out the first time.
    pub fn token_sha256(&self, digest: impl FnOnce() -> [u8; 32]) -> &[u8; 32] {
        self.token_sha256.get_or_init(digest)
    }
}
