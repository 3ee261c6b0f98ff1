//! Ended sessions' access tokens in Redis: stored by their SHA-256 until they would expire,
//! so that an instance that subscribes after a logout refuses them too.

use super::{clock, Shared, StoreError};

/// Where an ended session's access token is kept (by its SHA-256), until it would expire.
const ENDED_TOKEN: &str = "ended-token:";

/// Whether `s` is a SHA-256 as [`hex`](super::hex) writes it.
fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Shared {
    /// Publishes `message` (ended sessions) on `channel`, after storing their access tokens'
    /// digests (SHA-256 hex, with the Unix second each is refused until), so that an instance
    /// that subscribes later refuses them too.
    pub async fn announce_ended(
        &self,
        channel: &str,
        message: &str,
        tokens: &[(String, u64)],
    ) -> Result<(), StoreError> {
        let now = clock::unix_secs();
        let mut pipe = redis::pipe();
        for (digest, until) in tokens {
            if *until > now {
                pipe.cmd("SET")
                    .arg(format!("{}{ENDED_TOKEN}{digest}", self.prefix))
                    .arg(until)
                    .arg("EX")
                    .arg(until - now)
                    .ignore();
            }
        }
        pipe.cmd("PUBLISH").arg(channel).arg(message).ignore();
        self.run::<()>(&pipe).await
    }

    /// The ended sessions' access tokens stored by [`Self::announce_ended`] and not yet
    /// expired, at most `limit` of them: what an instance that (re)subscribes has missed.
    pub async fn ended_tokens(&self, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        let prefix = format!("{}{ENDED_TOKEN}", self.prefix);
        let pattern = format!("{prefix}*");
        let mut found = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::pipe();
            scan.cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let ((next, keys),): ((u64, Vec<String>),) = self.run(&scan).await?;
            if !keys.is_empty() {
                let mut get = redis::pipe();
                get.cmd("MGET").arg(&keys);
                let (values,): (Vec<Option<u64>>,) = self.run(&get).await?;
                for (key, until) in keys.iter().zip(values) {
                    let digest = key.strip_prefix(&prefix).filter(|d| is_digest(d));
                    if let (Some(digest), Some(until)) = (digest, until) {
                        found.push((digest.to_owned(), until));
                    }
                }
            }
            cursor = next;
            if cursor == 0 || found.len() >= limit {
                found.truncate(limit);
                return Ok(found);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::hex;
    use super::*;
    use sha2::Digest as _;

    #[test]
    fn only_a_digest_is_taken_from_a_stored_key() {
        assert!(is_digest(&hex(&sha2::Sha256::digest(b"token"))));
        for bad in [
            "",
            "ABCDEF",
            &"g".repeat(64),
            &"a".repeat(63),
            &"a".repeat(65),
        ] {
            assert!(!is_digest(bad), "{bad}");
        }
    }
}
