//! JWT verification and minting: token -> [`Claims`], against an HS secret and/or a JWKS
//! (RSA, EC P-256/P-384, Ed25519, oct). A token a client brings either verifies into typed
//! claims or fails with a [`TokenError`] (whose wire texts live in `protocol`). Checking is
//! pure and the clock injectable (`verify_at`); only `verify_fresh` may read the JWKS again
//! (`jwks`), for a token whose kid the hub does not know yet.
//!
//! Keys never cross families: the HS secret only verifies HS256/384/512, a JWKS RSA key only
//! RS/PS, and so on, so an RSA public key can never be abused as an HMAC secret.

mod jwks;

use std::collections::HashMap;
use std::sync::Arc;

pub use jwks::{refresh_every, Jwks, JwksSource, KID_REFRESH_EVERY};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

pub use crate::protocol::TokenError;

/// base64url, with or without padding (JWK members and JWT parts).
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

const HMAC_ALGS: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Verified claims of a token, parsed once. `json` is the claims object exactly as the
/// token carried it: what row-scope checks hand Postgres as `request.jwt.claims`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub role: Arc<str>,
    pub exp: i64,
    pub sub: Option<Arc<str>>,
    pub json: Arc<str>,
}

/// Why a verifier cannot be built or a token cannot be minted (operator errors, never
/// sent to clients).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no jwt key configured: set a jwt secret and/or a jwks")]
    NoKeySource,
    #[error("jwt secret is empty")]
    EmptySecret,
    #[error("invalid jwks: {0}")]
    InvalidJwks(String),
    #[error("failed to sign jwt: {0}")]
    Signing(String),
}

/// One verification key and the algorithms it may verify.
pub struct Key {
    kid: Option<String>,
    algs: Vec<Algorithm>,
    key: DecodingKey,
}

/// Verifies tokens against the configured keys. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    /// The HS secret, when configured.
    secret: Option<Arc<Key>>,
    /// The JWKS, when configured.
    jwks: Option<Arc<Jwks>>,
    /// Roles a token may name; `None` accepts any.
    roles: Option<Arc<[String]>>,
    /// Allowed roles the hub's database user may not act as.
    unavailable: Arc<[String]>,
    /// Seconds a token's `nbf` may lie in the future (clock skew).
    nbf_leeway: i64,
    /// Opaque API keys accepted in place of a JWT, by SHA-256 of the key.
    api_keys: Arc<HashMap<[u8; 32], Claims>>,
}

/// The `exp` of an API key's claims: an opaque key does not expire (2100-01-01).
pub const API_KEY_EXP: i64 = 4_102_444_800;

/// Leeway for `nbf` unless configured.
pub const DEFAULT_NBF_LEEWAY_SECS: i64 = 30;

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("secret", &self.secret.is_some())
            .field("jwks", &self.jwks.as_ref().map(|j| j.source().to_string()))
            .finish()
    }
}

impl Verifier {
    /// `jwks_json` is the contents of a JWKS document (`{"keys":[...]}`), never read
    /// again. At least one source is required. Keys marked `"use":"enc"` are skipped.
    pub fn new(hs_secret: Option<&str>, jwks_json: Option<&str>) -> Result<Verifier, AuthError> {
        let jwks = jwks_json.map(Jwks::fixed).transpose()?;
        Verifier::with_jwks(hs_secret, jwks.map(Arc::new))
    }

    /// An HS secret and/or a JWKS read from its source (`Jwks::load`), which
    /// `verify_fresh` and `refresh_every` read again.
    pub fn with_jwks(
        hs_secret: Option<&str>,
        jwks: Option<Arc<Jwks>>,
    ) -> Result<Verifier, AuthError> {
        if hs_secret.is_none() && jwks.is_none() {
            return Err(AuthError::NoKeySource);
        }
        let secret = match hs_secret {
            Some("") => return Err(AuthError::EmptySecret),
            Some(secret) => Some(Arc::new(Key {
                kid: None,
                algs: HMAC_ALGS.to_vec(),
                key: DecodingKey::from_secret(secret.as_bytes()),
            })),
            None => None,
        };
        if secret.is_none() && jwks.as_ref().is_none_or(|j| j.keys().is_empty()) {
            return Err(AuthError::InvalidJwks("no signing keys".into()));
        }
        Ok(Verifier {
            secret,
            jwks,
            roles: None,
            unavailable: Arc::new([]),
            api_keys: Arc::default(),
            nbf_leeway: DEFAULT_NBF_LEEWAY_SECS,
        })
    }

    /// The JWKS this verifier reads, if any.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    /// Only tokens naming one of `roles` verify (others fail with `RoleNotAllowed`).
    pub fn allow_roles(mut self, roles: &[String]) -> Verifier {
        self.roles = Some(roles.into());
        self
    }

    /// Opaque Supabase API keys (`sb_publishable_…`, `sb_secret_…`) verify as the role
    /// each stands for, with claims `{"role": <role>}`, as Supabase's gateway turns them
    /// into a JWT of that role before Realtime sees them. Keys are looked up by digest.
    pub fn api_keys(mut self, keys: &[(String, String)]) -> Verifier {
        let claims = |role: &str| Claims {
            role: role.into(),
            exp: API_KEY_EXP,
            sub: None,
            json: serde_json::json!({ "role": role }).to_string().into(),
        };
        let keys = keys
            .iter()
            .map(|(key, role)| (key_digest(key), claims(role)));
        self.api_keys = Arc::new(keys.collect());
        self
    }

    /// Whether `token` is one of the configured API keys.
    pub fn is_api_key(&self, token: &str) -> bool {
        self.api_key(token.trim()).is_some()
    }

    /// The claims of a configured API key.
    fn api_key(&self, token: &str) -> Option<Claims> {
        if self.api_keys.is_empty() || !token.starts_with("sb_") {
            return None;
        }
        self.api_keys.get(&key_digest(token)).cloned()
    }

    /// Tokens naming one of `roles` fail with `RoleUnavailable`: the hub's database user
    /// may not act as them (checked against Postgres at start).
    pub fn unavailable_roles(mut self, roles: &[String]) -> Verifier {
        self.unavailable = roles.into();
        self
    }

    /// How far in the future a token's `nbf` may lie.
    pub fn nbf_leeway(mut self, secs: i64) -> Verifier {
        self.nbf_leeway = secs.max(0);
        self
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, chrono::Utc::now().timestamp())
    }

    /// As `verify`, but a token whose kid no key has makes the hub read its JWKS again
    /// (`Jwks::refresh_for_kid`: at most once per `KID_REFRESH_EVERY`) and checks it
    /// once more: a key rotated in since the last read verifies its first token.
    pub async fn verify_fresh(&self, token: &str) -> Result<Claims, TokenError> {
        match self.verify(token) {
            Err(TokenError::Signer { kid }) => match &self.jwks {
                Some(jwks) if jwks.refresh_for_kid(&kid).await => self.verify(token),
                _ => Err(TokenError::Signer { kid }),
            },
            verified => verified,
        }
    }

    /// Checks shape, signature, required claims and expiry (no leeway) at `now_unix`.
    pub fn verify_at(&self, token: &str, now_unix: i64) -> Result<Claims, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if let Some(claims) = self.api_key(token) {
            self.check_role(&claims.role)?;
            return Ok(claims);
        }
        let (header, payload) = decode_parts(token)?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(allowed_alg)
            .ok_or(TokenError::Signature)?;
        let kid = header.get("kid").and_then(Value::as_str);
        let raw = self.verify_signature(token, alg, kid)?;
        let claims = claims_from(&raw, payload, now_unix)?;
        if let Some(nbf) = raw.get("nbf") {
            let nbf = nbf.as_f64().ok_or(TokenError::InvalidNbf)?;
            if nbf > (now_unix + self.nbf_leeway) as f64 {
                return Err(TokenError::NotYetValid);
            }
        }
        self.check_role(&claims.role)?;
        Ok(claims)
    }

    /// Whether a token naming `role` may verify: the role is in `allowed_roles` and the
    /// hub's database user may act as it.
    pub fn check_role(&self, role: &str) -> Result<(), TokenError> {
        if let Some(roles) = &self.roles {
            if !roles.iter().any(|r| r == role) {
                return Err(TokenError::RoleNotAllowed { role: role.into() });
            }
        }
        if self.unavailable.iter().any(|r| r == role) {
            return Err(TokenError::RoleUnavailable { role: role.into() });
        }
        Ok(())
    }

    /// Tries every key allowed for `alg`: those whose kid matches the token's, plus kid-less
    /// ones (the HS secret). Returns the claims of the first key that verifies. An
    /// asymmetric token whose kid no key has is told so (`Signer`), as Supabase tells it.
    fn verify_signature(
        &self,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Map<String, Value>, TokenError> {
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let jwks = self.jwks.as_ref().map(|j| j.keys()).unwrap_or_default();
        let keys = || self.secret.iter().map(|k| &**k).chain(jwks.iter());
        let candidates = keys().filter(|k| {
            k.algs.contains(&alg)
                && match (kid, k.kid.as_deref()) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        });
        for k in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => match e.kind() {
                    ErrorKind::InvalidToken | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
                        return Err(TokenError::Malformed)
                    }
                    _ => continue,
                },
            }
        }
        let symmetric = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
        match kid {
            Some(kid)
                if !symmetric
                    && !keys().any(|k| k.algs.contains(&alg) && k.kid.as_deref() == Some(kid)) =>
            {
                Err(TokenError::Signer {
                    kid: kid.to_owned(),
                })
            }
            _ => Err(TokenError::Signature),
        }
    }
}

/// Whether a join's `access_token` is a user token to verify. Supabase takes the
/// connection's apikey for an opaque `sb_...` key (supabase-js sends the project key
/// when there is no session) and for none at all (absent, `null`, or empty here);
/// anything else is verified, so a malformed one is refused (`MalformedJWT`), never
/// quietly replaced by the apikey's rights. (A pushed token is verified unless `null`
/// or `sb_...`, as Supabase does: `Session::refresh_token`.)
pub fn is_user_token(token: &str) -> bool {
    !token.starts_with("sb_") && !token.trim().is_empty()
}

fn key_digest(key: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes()).into()
}

/// Three dot-separated non-empty parts; opaque `sb_...` keys are not JWTs.
pub fn looks_like_jwt(token: &str) -> bool {
    if token.starts_with("sb_") {
        return false;
    }
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty())
}

/// Signs `claims` (a JSON object) with HS256; used by `switchboard token` and tests.
pub fn mint_hs256(secret: &str, claims: &Value) -> Result<String, AuthError> {
    if secret.is_empty() {
        return Err(AuthError::EmptySecret);
    }
    if !claims.is_object() {
        return Err(AuthError::Signing("claims must be a JSON object".into()));
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| AuthError::Signing(e.to_string()))
}

/// Checks the JWT shape (three base64url parts, header and payload JSON objects) and
/// returns the header and the payload's JSON text.
fn decode_parts(token: &str) -> Result<(Map<String, Value>, String), TokenError> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts[..] else {
        return Err(TokenError::Malformed);
    };
    let object = |part: &str| -> Option<(Map<String, Value>, Vec<u8>)> {
        let bytes = B64URL.decode(part).ok()?;
        match serde_json::from_slice(&bytes).ok()? {
            Value::Object(map) => Some((map, bytes)),
            _ => None,
        }
    };
    let (header, _) = object(header).ok_or(TokenError::Malformed)?;
    let (_, payload) = object(payload).ok_or(TokenError::Malformed)?;
    let payload = String::from_utf8(payload).map_err(|_| TokenError::Malformed)?;
    B64URL
        .decode(signature)
        .map_err(|_| TokenError::Malformed)?;
    Ok((header, payload))
}

/// The algorithms we accept in a token header (`none` is not one of them).
fn allowed_alg(name: &str) -> Option<Algorithm> {
    let alg = match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    };
    Some(alg)
}

/// Typed claims from the verified payload (`raw`, parsed) and its JSON text. Expiry is
/// told before a missing `role`, as Supabase tells it.
fn claims_from(
    raw: &Map<String, Value>,
    json: String,
    now_unix: i64,
) -> Result<Claims, TokenError> {
    let exp = match raw.get("exp").ok_or(TokenError::MissingClaims)? {
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i,
            (None, Some(f)) if f.is_finite() && f.abs() < 9.0e15 => f.floor() as i64,
            _ => return Err(TokenError::InvalidExp),
        },
        _ => return Err(TokenError::InvalidExp),
    };
    if exp <= now_unix {
        return Err(TokenError::Expired {
            seconds_ago: now_unix - exp,
        });
    }
    let role = raw
        .get("role")
        .and_then(Value::as_str)
        .ok_or(TokenError::MissingClaims)?;
    Ok(Claims {
        role: role.into(),
        exp,
        sub: raw.get("sub").and_then(Value::as_str).map(Arc::from),
        json: json.into(),
    })
}

fn key_from_jwk(jwk: &Value) -> Result<Key, String> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    let need = |name: &str| field(name).ok_or_else(|| format!("missing `{name}`"));
    let kid = field("kid").map(str::to_owned);
    let declared = match field("alg") {
        None => None,
        Some(name) => Some(allowed_alg(name).ok_or_else(|| format!("unsupported alg {name}"))?),
    };
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        B64URL
            .decode(need(name)?)
            .map_err(|_| format!("`{name}` is not base64url"))
    };
    let bad = |e: jsonwebtoken::errors::Error| e.to_string();
    let (family, key): (Vec<Algorithm>, DecodingKey) = match need("kty")? {
        "RSA" => (
            RSA_ALGS.to_vec(),
            DecodingKey::from_rsa_components(need("n")?, need("e")?).map_err(bad)?,
        ),
        "EC" => {
            let (alg, len) = match need("crv")? {
                "P-256" => (Algorithm::ES256, 32),
                "P-384" => (Algorithm::ES384, 48),
                other => return Err(format!("unsupported curve {other}")),
            };
            if bytes("x")?.len() != len || bytes("y")?.len() != len {
                return Err("bad EC coordinate length".into());
            }
            let key = DecodingKey::from_ec_components(need("x")?, need("y")?).map_err(bad)?;
            (vec![alg], key)
        }
        "OKP" => {
            if need("crv")? != "Ed25519" {
                return Err("unsupported OKP curve".into());
            }
            if bytes("x")?.len() != 32 {
                return Err("bad Ed25519 key length".into());
            }
            let key = DecodingKey::from_ed_components(need("x")?).map_err(bad)?;
            (vec![Algorithm::EdDSA], key)
        }
        "oct" => (HMAC_ALGS.to_vec(), DecodingKey::from_secret(&bytes("k")?)),
        other => return Err(format!("unsupported kty {other}")),
    };
    let algs = match declared {
        Some(alg) if family.contains(&alg) => vec![alg],
        Some(alg) => return Err(format!("alg {alg:?} does not fit the key type")),
        None => family,
    };
    Ok(Key { kid, algs, key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters";
    const NOW: i64 = 1_800_000_000;
    const JWKS: &str = include_str!("../tests/fixtures/jwt/jwks.json");
    const RSA_PRIVATE: &str = include_str!("../tests/fixtures/jwt/rsa_private.pem");
    const RSA_PUBLIC: &str = include_str!("../tests/fixtures/jwt/rsa_public.pem");
    const EC_PRIVATE: &str = include_str!("../tests/fixtures/jwt/ec_private.pem");
    const ED_PRIVATE: &str = include_str!("../tests/fixtures/jwt/ed_private.pem");

    fn claims() -> Value {
        json!({"role": "authenticated", "exp": NOW + 3600, "sub": "user-1", "aud": "authenticated"})
    }

    fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn rsa() -> EncodingKey {
        EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap()
    }

    fn hs_only() -> Verifier {
        Verifier::new(Some(SECRET), None).unwrap()
    }

    fn jwks_only() -> Verifier {
        Verifier::new(None, Some(JWKS)).unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn hs256_token_with_role_and_exp_is_accepted_with_all_its_claims() {
        let token = mint_hs256(SECRET, &claims()).unwrap();
        let c = hs_only().verify_at(&token, NOW).unwrap();
        assert_eq!(&*c.role, "authenticated");
        assert_eq!(c.exp, NOW + 3600);
        assert_eq!(c.sub.as_deref(), Some("user-1"));
        let carried: Value = serde_json::from_str(&c.json).unwrap();
        assert_eq!(carried, claims());
    }

    #[test]
    fn hs384_and_hs512_tokens_are_accepted_with_the_secret() {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let token = sign(alg, None, &key, &claims());
            assert!(hs_only().verify_at(&token, NOW).is_ok(), "{alg:?}");
        }
    }

    #[test]
    fn rs256_es256_and_eddsa_tokens_are_accepted_with_the_jwks() {
        let ec = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
        let ed = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
        let both = Verifier::new(Some(SECRET), Some(JWKS)).unwrap();
        for (alg, kid, key) in [
            (Algorithm::RS256, "rsa-1", rsa()),
            (Algorithm::ES256, "ec-1", ec),
            (Algorithm::EdDSA, "ed-1", ed),
        ] {
            let with_kid = sign(alg, Some(kid), &key, &claims());
            let without_kid = sign(alg, None, &key, &claims());
            for v in [jwks_only(), both.clone()] {
                assert_eq!(&*v.verify_at(&with_kid, NOW).unwrap().role, "authenticated");
                assert!(
                    v.verify_at(&without_kid, NOW).is_ok(),
                    "{alg:?} without kid"
                );
            }
        }
    }

    #[test]
    fn alg_none_token_is_rejected() {
        let payload = b64(claims().to_string().as_bytes());
        let both = Verifier::new(Some(SECRET), Some(JWKS)).unwrap();
        for alg in ["none", "None", "NONE"] {
            let header = b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
            for token in [
                format!("{header}.{payload}."),
                format!("{header}.{payload}.c2ln"),
            ] {
                let err = both.verify_at(&token, NOW).unwrap_err();
                assert!(matches!(err, TokenError::Signature), "{token}: {err:?}");
            }
        }
    }

    #[test]
    fn hs256_token_signed_with_the_rsa_public_key_is_rejected() {
        let key = EncodingKey::from_secret(RSA_PUBLIC.as_bytes());
        let mut tokens = vec![sign(Algorithm::HS256, None, &key, &claims())];
        tokens.push(sign(Algorithm::HS256, Some("rsa-1"), &key, &claims()));
        // the PEM text is the classic confusion secret; the raw modulus is another
        let jwks: Value = serde_json::from_str(JWKS).unwrap();
        let n = B64URL
            .decode(jwks["keys"][0]["n"].as_str().unwrap())
            .unwrap();
        let n_key = EncodingKey::from_secret(&n);
        tokens.push(sign(Algorithm::HS256, Some("rsa-1"), &n_key, &claims()));
        let both = Verifier::new(Some(SECRET), Some(JWKS)).unwrap();
        for token in &tokens {
            for v in [jwks_only(), both.clone()] {
                assert!(matches!(
                    v.verify_at(token, NOW),
                    Err(TokenError::Signature)
                ));
            }
        }
    }

    #[test]
    fn rs256_token_is_rejected_by_a_verifier_with_only_an_hs_secret() {
        let token = sign(Algorithm::RS256, None, &rsa(), &claims());
        let v = Verifier::new(Some(RSA_PUBLIC), None).unwrap();
        assert!(matches!(
            v.verify_at(&token, NOW),
            Err(TokenError::Signature)
        ));
        assert!(matches!(
            hs_only().verify_at(&token, NOW),
            Err(TokenError::Signature)
        ));
    }

    #[test]
    fn token_signed_with_a_different_secret_is_rejected() {
        let token = mint_hs256("another-secret-another-secret-another", &claims()).unwrap();
        let err = hs_only().verify_at(&token, NOW).unwrap_err();
        assert!(matches!(err, TokenError::Signature));
        assert_eq!(err.to_string(), "Failed to validate JWT signature");
    }

    #[test]
    fn tampered_payload_is_rejected() {
        let token = mint_hs256(SECRET, &claims()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims();
        forged["role"] = json!("service_role");
        let payload = b64(forged.to_string().as_bytes());
        let token = format!("{}.{}.{}", parts[0], payload, parts[2]);
        assert!(matches!(
            hs_only().verify_at(&token, NOW),
            Err(TokenError::Signature)
        ));
    }

    #[test]
    fn rs256_token_is_rejected_by_a_jwks_lacking_its_key() {
        let doc: Value = serde_json::from_str(JWKS).unwrap();
        let others: Vec<Value> = doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["kty"] != "RSA")
            .cloned()
            .collect();
        let v = Verifier::new(None, Some(&json!({"keys": others}).to_string())).unwrap();
        let token = sign(Algorithm::RS256, Some("rsa-1"), &rsa(), &claims());
        assert!(matches!(
            v.verify_at(&token, NOW),
            Err(TokenError::Signer { kid }) if kid == "rsa-1"
        ));
        let token = sign(Algorithm::RS256, None, &rsa(), &claims());
        assert!(matches!(
            v.verify_at(&token, NOW),
            Err(TokenError::Signature)
        ));
    }

    #[test]
    fn token_with_an_unknown_kid_is_rejected_naming_the_kid() {
        let token = sign(Algorithm::RS256, Some("rotated-away"), &rsa(), &claims());
        let err = jwks_only().verify_at(&token, NOW).unwrap_err();
        assert_eq!(
            crate::protocol::ReplyError::Token(err).to_string(),
            "JwtSignerError: Failed to generate JWT signer for key ID (kid) \"rotated-away\", \
             check your JWT secret or JWKS configuration"
        );
    }

    #[test]
    fn token_with_a_kid_of_another_key_type_is_rejected() {
        let token = sign(Algorithm::RS256, Some("ec-1"), &rsa(), &claims());
        assert!(matches!(
            jwks_only().verify_at(&token, NOW),
            Err(TokenError::Signer { kid }) if kid == "ec-1"
        ));
    }

    #[test]
    fn an_expired_token_without_a_role_is_told_it_expired_as_supabase_tells_it() {
        let mut c = claims();
        c["exp"] = json!(NOW - 1000);
        c.as_object_mut().unwrap().remove("role");
        let token = mint_hs256(SECRET, &c).unwrap();
        let err = hs_only().verify_at(&token, NOW).unwrap_err();
        assert_eq!(err, TokenError::Expired { seconds_ago: 1000 });
    }

    #[test]
    fn missing_role_or_exp_is_rejected_with_the_required_fields_text() {
        for drop in ["role", "exp"] {
            let mut c = claims();
            c.as_object_mut().unwrap().remove(drop);
            let token = mint_hs256(SECRET, &c).unwrap();
            let err = hs_only().verify_at(&token, NOW).unwrap_err();
            assert!(matches!(err, TokenError::MissingClaims), "{drop}");
            assert_eq!(
                err.to_string(),
                "Fields `role` and `exp` are required in JWT"
            );
            assert_eq!(err.code(), "InvalidJWTToken");
        }
    }

    #[test]
    fn non_numeric_exp_is_rejected_as_invalid_expiration() {
        for exp in [json!("soon"), json!(null), json!(true)] {
            let mut c = claims();
            c["exp"] = exp;
            let token = mint_hs256(SECRET, &c).unwrap();
            let err = hs_only().verify_at(&token, NOW).unwrap_err();
            assert_eq!(err.to_string(), "Token expiration time is invalid");
            assert_eq!(err.code(), "InvalidJWTToken");
        }
    }

    #[test]
    fn expired_token_reports_how_many_seconds_ago() {
        let mut c = claims();
        c["exp"] = json!(NOW - 30);
        let token = mint_hs256(SECRET, &c).unwrap();
        let err = hs_only().verify_at(&token, NOW).unwrap_err();
        assert_eq!(err, TokenError::Expired { seconds_ago: 30 });
    }

    #[test]
    fn token_expires_exactly_at_exp_without_leeway() {
        let mut c = claims();
        c["exp"] = json!(NOW);
        let token = mint_hs256(SECRET, &c).unwrap();
        assert!(hs_only().verify_at(&token, NOW - 1).is_ok());
        let err = hs_only().verify_at(&token, NOW).unwrap_err();
        assert!(matches!(err, TokenError::Expired { seconds_ago: 0 }));
    }

    #[test]
    fn a_token_not_valid_yet_is_refused_beyond_the_leeway() {
        let v = hs_only().nbf_leeway(30);
        let with_nbf = |nbf: Value| {
            let mut c = claims();
            c["nbf"] = nbf;
            mint_hs256(SECRET, &c).unwrap()
        };
        assert!(
            v.verify_at(&with_nbf(json!(NOW + 30)), NOW).is_ok(),
            "within the leeway"
        );
        assert_eq!(
            v.verify_at(&with_nbf(json!(NOW + 86_400)), NOW)
                .unwrap_err(),
            TokenError::NotYetValid
        );
        assert_eq!(
            v.verify_at(&with_nbf(json!("tomorrow")), NOW).unwrap_err(),
            TokenError::InvalidNbf
        );
        assert!(v.verify_at(&with_nbf(json!(NOW - 5)), NOW).is_ok());
    }

    #[test]
    fn roles_outside_the_allow_list_are_refused() {
        let v = hs_only().allow_roles(&["anon".into(), "authenticated".into()]);
        assert!(v
            .verify_at(&mint_hs256(SECRET, &claims()).unwrap(), NOW)
            .is_ok());
        let mut c = claims();
        c["role"] = json!("postgres");
        assert_eq!(
            v.verify_at(&mint_hs256(SECRET, &c).unwrap(), NOW)
                .unwrap_err(),
            TokenError::RoleNotAllowed {
                role: "postgres".into()
            }
        );
    }

    #[test]
    fn allowed_roles_the_database_user_cannot_act_as_are_refused_by_name() {
        let v = hs_only()
            .allow_roles(&["authenticated".into(), "staff".into()])
            .unavailable_roles(&["staff".into()]);
        let mut c = claims();
        c["role"] = json!("staff");
        let err = v
            .verify_at(&mint_hs256(SECRET, &c).unwrap(), NOW)
            .unwrap_err();
        assert_eq!(
            err,
            TokenError::RoleUnavailable {
                role: "staff".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "Token role \"staff\" is not available: the hub's database user is not a member of it (checked at start: restart the hub after granting it)"
        );
        assert!(v
            .verify_at(&mint_hs256(SECRET, &claims()).unwrap(), NOW)
            .is_ok());
    }

    #[test]
    fn verify_uses_the_real_clock() {
        let mut c = claims();
        c["exp"] = json!(chrono::Utc::now().timestamp() + 600);
        assert!(hs_only().verify(&mint_hs256(SECRET, &c).unwrap()).is_ok());
        c["exp"] = json!(chrono::Utc::now().timestamp() - 600);
        assert!(matches!(
            hs_only().verify(&mint_hs256(SECRET, &c).unwrap()),
            Err(TokenError::Expired { .. })
        ));
    }

    #[test]
    fn garbage_is_malformed_and_empty_is_missing() {
        for garbage in [
            "garbage",
            "a.b",
            "a.b.c",
            "a.b.c.d",
            "sb_publishable_abc",
            "....",
            "eyJ.eyJ.x",
            "\u{0}",
        ] {
            let err = hs_only().verify_at(garbage, NOW).unwrap_err();
            assert!(matches!(err, TokenError::Malformed), "{garbage}: {err:?}");
        }
        let not_object = format!("{}.{}.", b64(br#"{"alg":"HS256"}"#), b64(b"[1]"));
        assert!(matches!(
            hs_only().verify_at(&not_object, NOW),
            Err(TokenError::Malformed)
        ));
        for empty in ["", "   "] {
            assert_eq!(
                hs_only().verify_at(empty, NOW).unwrap_err(),
                TokenError::Missing
            );
        }
    }

    #[test]
    fn configured_api_keys_verify_as_their_role_and_other_opaque_keys_do_not() {
        let keys = [
            ("sb_publishable_0123456789".to_owned(), "anon".to_owned()),
            ("sb_secret_0123456789".to_owned(), "service_role".to_owned()),
        ];
        let v = hs_only()
            .allow_roles(&["anon".into(), "service_role".into()])
            .api_keys(&keys);
        let anon = v.verify_at(" sb_publishable_0123456789 ", NOW).unwrap();
        assert_eq!(&*anon.role, "anon");
        assert_eq!(anon.sub, None);
        assert_eq!(anon.exp, API_KEY_EXP);
        assert_eq!(&*anon.json, r#"{"role":"anon"}"#);
        assert_eq!(
            &*v.verify_at("sb_secret_0123456789", NOW).unwrap().role,
            "service_role"
        );
        for other in ["sb_publishable_other", "sb_secret_0123456788"] {
            assert_eq!(
                v.verify_at(other, NOW),
                Err(TokenError::Malformed),
                "{other}"
            );
        }
        // A key's role is held to the same limits as a token's.
        let limited = v.clone().allow_roles(&["anon".into()]);
        assert!(matches!(
            limited.verify_at("sb_secret_0123456789", NOW),
            Err(TokenError::RoleNotAllowed { .. })
        ));
        let unavailable = v.unavailable_roles(&["service_role".into()]);
        assert!(matches!(
            unavailable.verify_at("sb_secret_0123456789", NOW),
            Err(TokenError::RoleUnavailable { .. })
        ));
        // Without keys configured, an opaque key is refused as before.
        assert_eq!(
            hs_only().verify_at("sb_publishable_0123456789", NOW),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn every_access_token_but_an_opaque_key_or_none_is_verified() {
        for token in ["a.b.c", "not-a-jwt", "a.b.", "undefined"] {
            assert!(is_user_token(token), "{token}");
        }
        for token in ["", "  ", "sb_publishable_x", "sb_secret_abc"] {
            assert!(!is_user_token(token), "{token:?}");
        }
    }

    #[test]
    fn looks_like_jwt_wants_three_non_empty_parts() {
        let token = mint_hs256(SECRET, &claims()).unwrap();
        assert!(looks_like_jwt(&token));
        assert!(looks_like_jwt("a.b.c"));
        for not in [
            "",
            "a.b",
            "a..c",
            ".b.c",
            "a.b.",
            "a.b.c.d",
            "sb_publishable_x.y.z",
            "sb_secret_abc",
        ] {
            assert!(!looks_like_jwt(not), "{not}");
        }
    }

    #[test]
    fn verifier_needs_a_usable_key_source() {
        assert!(matches!(
            Verifier::new(None, None),
            Err(AuthError::NoKeySource)
        ));
        assert!(matches!(
            Verifier::new(Some(""), None),
            Err(AuthError::EmptySecret)
        ));
        for bad in [
            "not json",
            "{}",
            r#"{"keys":[]}"#,
            r#"{"keys":[{"kty":"RSA","n":"AQAB"}]}"#,
            r#"{"keys":[{"kty":"EC","crv":"P-521","x":"AA","y":"AA"}]}"#,
            r#"{"keys":[{"kty":"RSA","alg":"ES256","n":"AQAB","e":"AQAB"}]}"#,
        ] {
            assert!(
                matches!(
                    Verifier::new(None, Some(bad)),
                    Err(AuthError::InvalidJwks(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn jwks_oct_key_verifies_hs_tokens_by_kid() {
        let jwks = json!({"keys": [{"kty": "oct", "kid": "hs-1", "k": b64(b"jwks-hmac-secret")}]})
            .to_string();
        let v = Verifier::new(None, Some(&jwks)).unwrap();
        let key = EncodingKey::from_secret(b"jwks-hmac-secret");
        assert!(v
            .verify_at(&sign(Algorithm::HS256, Some("hs-1"), &key, &claims()), NOW)
            .is_ok());
        let wrong = mint_hs256(SECRET, &claims()).unwrap();
        assert!(matches!(
            v.verify_at(&wrong, NOW),
            Err(TokenError::Signature)
        ));
    }
}
