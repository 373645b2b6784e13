//! JWT verification as plain logic: a key set parsed from JWKS bytes, and a verifier that turns
//! a token into its claims or says precisely why not. Reading the key file is [`crate::KeyFile`]'s
//! job.

use std::collections::HashSet;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};
use strait_config::auth::{JwtAlgorithm, JwtAuth};

/// The verified claims of a token.
pub type Claims = Map<String, Value>;

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("not a JSON Web Key Set ({{\"keys\": [...]}}): {0}")]
    Json(#[from] serde_json::Error),
    #[error("key {index} (kid {kid:?}) is not a usable public key: {error}")]
    Key {
        index: usize,
        kid: Option<String>,
        error: jsonwebtoken::errors::Error,
    },
    #[error("the key set holds no signature key")]
    Empty,
}

/// Why a token was refused; each has a short stable label for logs and metrics. Never carries
/// the token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token")]
    Missing,
    #[error("not a well-formed JWT")]
    Malformed,
    #[error("algorithm {0:?} is not allowed")]
    AlgorithmNotAllowed(Algorithm),
    #[error("no key with kid {0:?}")]
    UnknownKey(Option<String>),
    #[error("bad signature")]
    BadSignature,
    #[error("expired")]
    Expired,
    #[error("not valid yet (nbf)")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("required claim {0:?} missing or malformed")]
    BadClaim(String),
}

impl TokenError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Missing => "missing_token",
            Self::Malformed => "malformed_token",
            Self::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            Self::UnknownKey(_) => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::BadClaim(_) => "bad_claim",
        }
    }
}

/// One usable key of the set.
struct Key {
    kid: Option<String>,
    /// The `alg` the key is restricted to, when the JWK names one.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// The keys tokens may be signed with.
pub struct KeySet {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|k| k.kid.as_deref()).collect();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

impl KeySet {
    /// Parses a JWKS document. Keys of kinds jsonwebtoken cannot use make the whole set
    /// invalid, so a typo is noticed when the file is loaded rather than at a client's first call.
    pub fn from_jwks(bytes: &[u8]) -> Result<Self, KeysError> {
        let set: JwkSet = serde_json::from_slice(bytes)?;
        let keys = set
            .keys
            .iter()
            .enumerate()
            .filter(|(_, jwk)| is_signing_key(jwk))
            .map(|(index, jwk)| {
                Ok(Key {
                    kid: jwk.common.key_id.clone(),
                    alg: jwk_algorithm(jwk),
                    key: DecodingKey::from_jwk(jwk).map_err(|error| KeysError::Key {
                        index,
                        kid: jwk.common.key_id.clone(),
                        error,
                    })?,
                })
            })
            .collect::<Result<Vec<_>, KeysError>>()?;
        if keys.is_empty() {
            return Err(KeysError::Empty);
        }
        Ok(Self { keys })
    }

    /// How many signature keys the set holds (never 0).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

/// The JWS algorithm the JWK is restricted to, if it names one.
fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let name = serde_json::to_value(jwk.common.key_algorithm.as_ref()?).ok()?;
    name.as_str()?.parse().ok()
}

/// Encryption keys (`use: enc`, or an `alg` that is no JWS algorithm) a shared JWKS may also
/// hold are left out.
fn is_signing_key(jwk: &Jwk) -> bool {
    let for_encryption = matches!(
        jwk.common.public_key_use,
        Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
    );
    !for_encryption && (jwk.common.key_algorithm.is_none() || jwk_algorithm(jwk).is_some())
}

fn algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
    }
}

/// Checks tokens against the issuer, audience, algorithms and leeway of `auth.jwt`.
#[derive(Debug, Clone)]
pub struct Verifier {
    algorithms: HashSet<Algorithm>,
    issuer: String,
    audience: Option<String>,
    leeway: u64,
}

impl Verifier {
    pub fn new(config: &JwtAuth) -> Self {
        Self {
            algorithms: config.algorithms.iter().copied().map(algorithm).collect(),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway.as_secs(),
        }
    }

    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    /// The token's claims when it is signed by one of `keys` with an allowed algorithm, comes
    /// from the issuer (and for the audience), has an `exp` and is valid now.
    pub fn verify(&self, token: &str, keys: &KeySet) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let alg = header.alg;
        if !self.algorithms.contains(&alg) {
            return Err(TokenError::AlgorithmNotAllowed(alg));
        }
        let candidates: Vec<&Key> = keys
            .keys
            .iter()
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .filter(|k| k.key.family() == alg.family() && k.alg.is_none_or(|a| a == alg))
            .collect();
        if candidates.is_empty() {
            return Err(TokenError::UnknownKey(header.kid));
        }
        let validation = self.validation(alg);
        let mut last = TokenError::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(error) => {
                    last = match error.into_kind() {
                        ErrorKind::InvalidSignature
                        | ErrorKind::InvalidEcdsaKey
                        | ErrorKind::InvalidEddsaKey
                        | ErrorKind::InvalidRsaKey(_)
                        | ErrorKind::InvalidKeyFormat
                        | ErrorKind::InvalidAlgorithm => TokenError::BadSignature,
                        ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                        ErrorKind::ImmatureSignature => return Err(TokenError::NotYetValid),
                        ErrorKind::InvalidIssuer => return Err(TokenError::WrongIssuer),
                        ErrorKind::InvalidAudience => return Err(TokenError::WrongAudience),
                        ErrorKind::MissingRequiredClaim(claim)
                        | ErrorKind::InvalidClaimFormat(claim) => {
                            return Err(TokenError::BadClaim(claim));
                        }
                        _ => return Err(TokenError::Malformed),
                    }
                }
            }
        }
        Err(last)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        let mut required = vec!["exp", "iss"];
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }
}

/// The claim `name` as a string (numbers and booleans are written out).
pub fn claim_str(claims: &Claims, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The claim `name` as a list of strings: a JSON array of strings, or one string. Missing or
/// of another shape: empty.
pub fn claim_list(claims: &Claims, name: &str) -> Vec<String> {
    match claims.get(name) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use std::time::Duration;

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    struct Signer {
        kid: String,
        key: EncodingKey,
        jwk: Jwk,
    }

    fn es256(kid: &str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = EncodingKey::from_ec_der(&pair.serialize_der());
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some(kid.into());
        Signer {
            kid: kid.into(),
            key,
            jwk,
        }
    }

    impl Signer {
        fn sign(&self, claims: &Value) -> String {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(self.kid.clone());
            jsonwebtoken::encode(&header, claims, &self.key).unwrap()
        }
    }

    fn jwks(signers: &[&Signer]) -> KeySet {
        let set = JwkSet {
            keys: signers.iter().map(|s| s.jwk.clone()).collect(),
        };
        KeySet::from_jwks(&serde_json::to_vec(&set).unwrap()).unwrap()
    }

    fn verifier() -> Verifier {
        let mut config = JwtAuth::new("https://issuer/", "/unused");
        config.audience = Some("mqtt".into());
        config.leeway = Duration::from_secs(5);
        Verifier::new(&config)
    }

    fn claims(exp_from_now: i64) -> Value {
        json!({
            "iss": "https://issuer/", "aud": "mqtt", "sub": "d1",
            "exp": (now() as i64 + exp_from_now), "pub": ["a/#"],
        })
    }

    #[test]
    fn valid_token_yields_its_claims() {
        let signer = es256("k1");
        let claims = verifier()
            .verify(&signer.sign(&claims(60)), &jwks(&[&signer]))
            .unwrap();
        assert_eq!(claim_str(&claims, "sub").as_deref(), Some("d1"));
        assert_eq!(claim_list(&claims, "pub"), ["a/#"]);
        assert_eq!(
            claim_list(&claims, "sub"),
            ["d1"],
            "one string is a list of one"
        );
        assert!(claim_list(&claims, "none").is_empty());
    }

    #[test]
    fn each_refusal_says_why() {
        let signer = es256("k1");
        let other = es256("k1");
        let keys = jwks(&[&signer]);
        let v = verifier();
        let mut wrong_iss = claims(60);
        wrong_iss["iss"] = json!("https://elsewhere/");
        let mut wrong_aud = claims(60);
        wrong_aud["aud"] = json!("web");
        let mut no_exp = claims(60);
        no_exp.as_object_mut().unwrap().remove("exp");
        let mut later = claims(600);
        later["nbf"] = json!(now() + 300);
        let cases = [
            (signer.sign(&claims(-60)), TokenError::Expired),
            (signer.sign(&wrong_iss), TokenError::WrongIssuer),
            (signer.sign(&wrong_aud), TokenError::WrongAudience),
            (signer.sign(&no_exp), TokenError::BadClaim("exp".into())),
            (signer.sign(&later), TokenError::NotYetValid),
            (other.sign(&claims(60)), TokenError::BadSignature),
            (
                es256("k2").sign(&claims(60)),
                TokenError::UnknownKey(Some("k2".into())),
            ),
            ("not.a.jwt".to_string(), TokenError::Malformed),
        ];
        for (token, want) in cases {
            assert_eq!(v.verify(&token, &keys), Err(want.clone()), "{want}");
        }
    }

    #[test]
    fn leeway_tolerates_small_clock_skew() {
        let signer = es256("k1");
        assert!(
            verifier()
                .verify(&signer.sign(&claims(-2)), &jwks(&[&signer]))
                .is_ok()
        );
    }

    #[test]
    fn algorithms_outside_the_list_and_unsigned_tokens_are_refused() {
        let signer = es256("k1");
        let keys = jwks(&[&signer]);
        let mut config = JwtAuth::new("https://issuer/", "/unused");
        config.algorithms = vec![JwtAlgorithm::RS256];
        let only_rsa = Verifier::new(&config);
        assert_eq!(
            only_rsa.verify(&signer.sign(&claims(60)), &keys),
            Err(TokenError::AlgorithmNotAllowed(Algorithm::ES256))
        );
        // alg "none": header {"alg":"none"}, empty signature.
        let unsigned = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci8ifQ.";
        assert_eq!(
            verifier().verify(unsigned, &keys),
            Err(TokenError::Malformed)
        );
        // An HMAC token "signed" with the public key must not pass as ES256's key.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(60),
            &EncodingKey::from_secret(b"public key bytes").unwrap(),
        )
        .unwrap();
        let mut config = JwtAuth::new("https://issuer/", "/unused");
        config.algorithms.push(JwtAlgorithm::HS256);
        assert_eq!(
            Verifier::new(&config).verify(&hs, &keys),
            Err(TokenError::UnknownKey(None)),
            "no HMAC key in the set"
        );
    }

    #[test]
    fn rotated_sets_pick_the_key_by_kid() {
        let old = es256("old");
        let new = es256("new");
        let keys = jwks(&[&old, &new]);
        assert!(verifier().verify(&old.sign(&claims(60)), &keys).is_ok());
        assert!(verifier().verify(&new.sign(&claims(60)), &keys).is_ok());
    }

    #[test]
    fn bad_key_files_are_refused() {
        assert!(matches!(
            KeySet::from_jwks(b"{\"keys\": []}"),
            Err(KeysError::Empty)
        ));
        assert!(matches!(
            KeySet::from_jwks(b"nope"),
            Err(KeysError::Json(_))
        ));
    }
}
