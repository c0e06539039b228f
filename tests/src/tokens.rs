//! JWTs for the authentication tests, signed with the keys in `tests/keys`.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The secret of HS256 tests.
pub const SECRET: &str = "a test secret of thirty-two bytes";

/// A test key file, by name (`rsa-public.pem`, ...).
pub fn key_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("keys")
        .join(name)
}

fn key(name: &str) -> Vec<u8> {
    std::fs::read(key_path(name)).unwrap_or_else(|e| panic!("test key {name}: {e}"))
}

/// Seconds since the Unix epoch, `offset` from now.
pub fn now_plus(offset: i64) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    now + offset
}

/// The claims of a token, built up and then signed.
#[derive(Debug, Clone)]
pub struct Claims(Value);

impl Claims {
    /// A token for `sub`, valid for an hour, with no permissions.
    pub fn new(sub: &str) -> Self {
        Claims(json!({"sub": sub, "exp": now_plus(3600)}))
    }

    /// Allows publishing to these filters.
    pub fn publish(mut self, filters: &[&str]) -> Self {
        self.permissions()["publish"] = json!(filters);
        self
    }

    /// Allows subscribing to these filters.
    pub fn subscribe(mut self, filters: &[&str]) -> Self {
        self.permissions()["subscribe"] = json!(filters);
        self
    }

    /// Sets a claim (`exp`, `nbf`, `sub`, ...) to `value`; `null` removes it.
    pub fn set(mut self, claim: &str, value: Value) -> Self {
        let claims = self.0.as_object_mut().expect("an object");
        if value.is_null() {
            claims.remove(claim);
        } else {
            claims.insert(claim.to_owned(), value);
        }
        self
    }

    fn permissions(&mut self) -> &mut Value {
        let claims = self.0.as_object_mut().expect("an object");
        claims
            .entry("permissions")
            .or_insert_with(|| json!({"publish": [], "subscribe": []}))
    }

    /// Signed HS256 with [`SECRET`].
    pub fn hs256(&self) -> String {
        self.hs256_with(SECRET.as_bytes())
    }

    /// Signed HS256 with `secret`.
    pub fn hs256_with(&self, secret: &[u8]) -> String {
        let key = EncodingKey::from_secret(secret).expect("a secret");
        self.sign(Algorithm::HS256, &key)
    }

    /// Signed RS256 with the RSA test key (or `other-rsa-private.pem`).
    pub fn rs256(&self, private_key: &str) -> String {
        let key = EncodingKey::from_rsa_pem(&key(private_key)).expect("an RSA key");
        self.sign(Algorithm::RS256, &key)
    }

    /// Signed ES256 with the EC test key.
    pub fn es256(&self) -> String {
        let key = EncodingKey::from_ec_pem(&key("ec-private.pem")).expect("an EC key");
        self.sign(Algorithm::ES256, &key)
    }

    /// HS256 with the RSA public key as its secret: what an attacker who
    /// knows the public key forges against a verifier that trusts `alg`.
    pub fn hs256_with_public_key(&self) -> String {
        self.hs256_with(&key("rsa-public.pem"))
    }

    /// `alg: none`, no signature.
    pub fn unsigned(&self) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(self.0.to_string());
        format!("{header}.{claims}.")
    }

    fn sign(&self, algorithm: Algorithm, key: &EncodingKey) -> String {
        jsonwebtoken::encode(&Header::new(algorithm), &self.0, key).expect("a token")
    }
}
