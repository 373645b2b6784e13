//! JWTs for tests: an ES256 key pair made by the test, its public half as a JWKS file, and the
//! tokens it signs.

use std::path::Path;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

/// An ES256 key pair with its public half as a JWK named `kid`.
pub struct Signer {
    kid: String,
    key: EncodingKey,
    pub jwk: Jwk,
}

impl Signer {
    pub fn new(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
        let key = EncodingKey::from_ec_der(&pair.serialize_der());
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).expect("a JWK");
        jwk.common.key_id = Some(kid.into());
        Self {
            kid: kid.into(),
            key,
            jwk,
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).expect("a signed token")
    }
}

/// Writes the JWKS of `signers` atomically (as a Secret update does), so a proxy never reads
/// half a file.
pub fn write_jwks(path: &Path, signers: &[&Signer]) {
    let set = JwkSet {
        keys: signers.iter().map(|s| s.jwk.clone()).collect(),
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&set).expect("JWKS as JSON")).expect("writing JWKS");
    std::fs::rename(&tmp, path).expect("replacing JWKS");
}

/// Seconds since the Unix epoch, for `exp` and `nbf`.
pub fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}
