//! Sealing what the gateway hands out or stores: AES-256-GCM with a random nonce, bound to
//! where it belongs (the associated data), under the first of a list of keys, opened with
//! any of them so that keys can be rotated.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

pub const KEY_BYTES: usize = 32;

pub struct Sealer {
    keys: Vec<LessSafeKey>,
    /// The raw keys, to tell whether a reload changed them.
    material: Vec<[u8; KEY_BYTES]>,
}

impl Sealer {
    pub fn new(keys: Vec<[u8; KEY_BYTES]>) -> Result<Sealer, &'static str> {
        if keys.is_empty() {
            return Err("at least one key is needed");
        }
        let sealing = keys
            .iter()
            .map(|k| UnboundKey::new(&AES_256_GCM, k).map(LessSafeKey::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "not an AES-256 key")?;
        Ok(Sealer {
            keys: sealing,
            material: keys,
        })
    }

    /// A sealer with a key of its own, for one process.
    pub fn random() -> Result<Sealer, &'static str> {
        Sealer::new(vec![random_bytes()?])
    }

    pub fn same_keys(&self, keys: &[[u8; KEY_BYTES]]) -> bool {
        self.material == keys
    }

    /// `nonce || ciphertext || tag`.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, &'static str> {
        let nonce: [u8; NONCE_LEN] = random_bytes()?;
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let (_, body) = out.split_at_mut(NONCE_LEN);
        let tag = self.keys[0]
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), body)
            .map_err(|_| "sealing failed")?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// What `seal` sealed with `aad` under any of the keys; `None` for anything else.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        self.keys.iter().find_map(|key| {
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            let mut buffer = body.to_vec();
            let plain = key.open_in_place(nonce, Aad::from(aad), &mut buffer).ok()?;
            Some(plain.to_vec())
        })
    }

    /// [`Sealer::seal`] as URL-safe base64, for a cookie.
    pub fn seal_text(&self, aad: &[u8], plain: &[u8]) -> Result<String, &'static str> {
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.seal(aad, plain)?))
    }

    pub fn open_text(&self, aad: &[u8], sealed: &str) -> Option<Vec<u8>> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sealed)
            .ok()?;
        self.open(aad, &bytes)
    }
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], &'static str> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no randomness available")?;
    Ok(bytes)
}

/// 256 random bits as URL-safe base64: an id nobody can guess.
pub fn random_id() -> Result<String, &'static str> {
    let bytes: [u8; 32] = random_bytes()?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// A key as written in a file or a variable: 32 raw bytes, 64 hex digits, or base64.
pub fn parse_key(text: &[u8]) -> Result<[u8; KEY_BYTES], String> {
    if let Ok(raw) = <[u8; KEY_BYTES]>::try_from(text) {
        return Ok(raw);
    }
    let text = std::str::from_utf8(text)
        .map_err(|_| format!("must be {KEY_BYTES} bytes, hex or base64"))?
        .trim();
    let decoded = if text.len() == 2 * KEY_BYTES && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..KEY_BYTES)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .ok()
    } else {
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::URL_SAFE,
        ];
        let unpadded = text.trim_end_matches('=');
        engines
            .iter()
            .find_map(|e| e.decode(text).ok())
            .or_else(|| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(unpadded)
                    .ok()
            })
    };
    let decoded = decoded.ok_or_else(|| format!("must be {KEY_BYTES} bytes, hex or base64"))?;
    <[u8; KEY_BYTES]>::try_from(decoded.as_slice()).map_err(|_| {
        format!(
            "must be {KEY_BYTES} bytes (256 bits); this one has {}",
            decoded.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_opens_only_with_its_place_and_a_known_key() {
        let old = [7u8; 32];
        let new = [9u8; 32];
        let sealer = Sealer::new(vec![old]).expect("key");
        let sealed = sealer.seal(b"place", b"secret").expect("seal");
        assert_eq!(
            sealer.open(b"place", &sealed).as_deref(),
            Some(&b"secret"[..])
        );
        assert_eq!(sealer.open(b"elsewhere", &sealed), None);
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert_eq!(sealer.open(b"place", &tampered), None);
        assert_eq!(sealer.open(b"place", &sealed[..10]), None);
        // Rotated: the new key seals, the old one still opens.
        let rotated = Sealer::new(vec![new, old]).expect("keys");
        assert_eq!(
            rotated.open(b"place", &sealed).as_deref(),
            Some(&b"secret"[..])
        );
        let resealed = rotated.seal(b"place", b"x").expect("seal");
        assert_eq!(sealer.open(b"place", &resealed), None);
        assert!(Sealer::new(vec![]).is_err());
    }

    #[test]
    fn keys_are_read_raw_hex_or_base64() {
        let key = [0xabu8; 32];
        assert_eq!(parse_key(&key).expect("raw"), key);
        assert_eq!(parse_key("ab".repeat(32).as_bytes()).expect("hex"), key);
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        assert_eq!(parse_key(format!("{b64}\n").as_bytes()).expect("b64"), key);
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        assert!(parse_key(short.as_bytes()).unwrap_err().contains("16"));
    }
}
