//! JWT authentication shared by r-proxy (a token in the MQTT CONNECT password) and grpc-kafka
//! (`authorization: Bearer` metadata): the verifier ([`Verifier`], plain logic with a precise
//! reason for every refusal) and the JWKS file it trusts ([`KeyFile`], read again when it
//! changes so keys rotate without a restart).

mod keys;
mod verify;

pub use keys::{KeyFile, KeyFileError};
pub use verify::*;
