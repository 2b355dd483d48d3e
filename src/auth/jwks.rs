//! The JWKS: where it comes from (a file, an http(s) URL such as a Supabase project's
//! `/auth/v1/.well-known/jwks.json`, or a document handed in), and when it is read again.
//!
//! A rotated key reaches the hub without a restart in two ways: every `jwks_refresh_secs`
//! the source is read again (so a key published as standby, or one withdrawn, is seen),
//! and a token whose `kid` no key has makes the hub read it at once, at most once per
//! `KID_REFRESH_EVERY` (so tokens with made-up kids cannot make it fetch in a loop). A
//! read that fails, or a document that does not parse, keeps the keys the hub has.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{key_from_jwk, AuthError, Key};

/// Least time between two reads caused by unknown kids.
pub const KID_REFRESH_EVERY: Duration = Duration::from_secs(10);
/// How long one fetch of a JWKS URL may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JWKS document accepted (a real one is a few KiB).
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Where the JWKS is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A file, read again on refresh.
    File(PathBuf),
    /// An `http://` or `https://` URL, fetched again on refresh.
    Url(String),
    /// A document given as is (embedders, tests): never read again.
    Document(String),
}

impl JwksSource {
    /// A setting's value: an http(s) URL, else a file path.
    pub fn from_setting(value: &str) -> Result<JwksSource, String> {
        let value = value.trim();
        let lower = value.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let url = reqwest::Url::parse(value).map_err(|e| format!("{value:?}: {e}"))?;
            return Ok(JwksSource::Url(url.to_string()));
        }
        Ok(JwksSource::File(PathBuf::from(value)))
    }

    fn refreshable(&self) -> bool {
        !matches!(self, JwksSource::Document(_))
    }

    async fn read(&self, client: &Option<reqwest::Client>) -> Result<String, String> {
        match (self, client) {
            (JwksSource::Document(doc), _) => Ok(doc.clone()),
            (JwksSource::File(path), _) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
            (JwksSource::Url(url), Some(client)) => fetch(client, url).await,
            (JwksSource::Url(url), None) => Err(format!("no HTTP client to fetch {url}")),
        }
    }
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::File(path) => write!(f, "{}", path.display()),
            JwksSource::Url(url) => f.write_str(url),
            JwksSource::Document(_) => f.write_str("(document)"),
        }
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let mut resp = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("{url} answered HTTP {}", status.as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("cannot read {url}: {e}"))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(format!("{url} sent more than {MAX_DOCUMENT_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| format!("{url} sent a body that is not UTF-8"))
}

/// The signing keys of a JWKS document (`{"keys":[...]}`). Keys marked `"use":"enc"` are
/// skipped, and so is, with a warning, any key the hub cannot verify with (an algorithm,
/// curve or key type it does not support, a malformed member): one such key published
/// beside the project's own must not keep the others from verifying. A document that is
/// not JSON or has no `keys` array is refused.
pub fn parse(json: &str) -> Result<Vec<Key>, AuthError> {
    let doc: Value =
        serde_json::from_str(json).map_err(|e| AuthError::InvalidJwks(e.to_string()))?;
    let list = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| AuthError::InvalidJwks("missing `keys` array".into()))?;
    let mut keys = Vec::new();
    for (i, jwk) in list.iter().enumerate() {
        if jwk.get("use").and_then(Value::as_str) == Some("enc") {
            continue;
        }
        match key_from_jwk(jwk) {
            Ok(key) => keys.push(key),
            Err(reason) => {
                let kid = jwk.get("kid").and_then(Value::as_str).unwrap_or("");
                tracing::warn!(key = i, kid, %reason, "JWKS key skipped: the hub cannot verify with it");
            }
        }
    }
    Ok(keys)
}

/// The keys read from one source, replaced whole on each successful read.
pub struct Jwks {
    source: JwksSource,
    /// For a URL source.
    client: Option<reqwest::Client>,
    keys: RwLock<Arc<Vec<Key>>>,
    /// When an unknown kid last caused a read; held while that read runs, so tokens
    /// arriving meanwhile wait for it instead of reading again.
    kid_refresh: tokio::sync::Mutex<Option<Instant>>,
    /// Least time between two such reads (`KID_REFRESH_EVERY` unless set).
    kid_refresh_every: Duration,
}

impl Jwks {
    /// Keys that are never read again.
    pub fn fixed(json: &str) -> Result<Jwks, AuthError> {
        let keys = parse(json)?;
        Ok(Jwks::with_keys(
            JwksSource::Document(json.to_owned()),
            None,
            keys,
        ))
    }

    /// Reads `source` once; fails when it cannot be read or holds no usable keys.
    pub async fn load(source: JwksSource) -> Result<Jwks, AuthError> {
        let client = matches!(source, JwksSource::Url(_)).then(http_client);
        let doc = source.read(&client).await.map_err(AuthError::InvalidJwks)?;
        let keys = parse(&doc)?;
        Ok(Jwks::with_keys(source, client, keys))
    }

    fn with_keys(source: JwksSource, client: Option<reqwest::Client>, keys: Vec<Key>) -> Jwks {
        Jwks {
            source,
            client,
            keys: RwLock::new(Arc::new(keys)),
            kid_refresh: tokio::sync::Mutex::new(None),
            kid_refresh_every: KID_REFRESH_EVERY,
        }
    }

    /// Unknown kids cause a read at most once per `every`.
    pub fn kid_refresh_every(mut self, every: Duration) -> Jwks {
        self.kid_refresh_every = every;
        self
    }

    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    /// The keys of the last successful read.
    pub fn keys(&self) -> Arc<Vec<Key>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn has_kid(&self, kid: &str) -> bool {
        self.keys().iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Reads the source again and takes its keys; on failure keeps the ones it has.
    /// Returns how many keys it now has.
    pub async fn reload(&self) -> Result<usize, String> {
        if !self.source.refreshable() {
            return Ok(self.keys().len());
        }
        let doc = self.source.read(&self.client).await?;
        let keys = parse(&doc).map_err(|e| e.to_string())?;
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(n)
    }

    /// A token named `kid`, which no key has: reads the source again unless an unknown
    /// kid did so within `KID_REFRESH_EVERY`. Whether a key with `kid` is known now.
    pub async fn refresh_for_kid(&self, kid: &str) -> bool {
        if !self.source.refreshable() {
            return false;
        }
        let mut last = self.kid_refresh.lock().await;
        if self.has_kid(kid) {
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < self.kid_refresh_every) {
            return false;
        }
        *last = Some(Instant::now());
        match self.reload().await {
            Ok(n) => {
                let found = self.has_kid(kid);
                tracing::info!(source = %self.source, keys = n, kid, found, "read the JWKS again for a token's unknown kid");
                found
            }
            Err(e) => {
                tracing::warn!(source = %self.source, error = %e, kid, "could not read the JWKS again; keeping the keys it had");
                false
            }
        }
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// Reads `jwks` again every `every` until `shutdown`; a failed read is logged and the
/// keys it had stay.
pub async fn refresh_every(
    jwks: Arc<Jwks>,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match jwks.reload().await {
            Ok(n) => tracing::debug!(source = %jwks.source, keys = n, "read the JWKS again"),
            Err(e) => {
                tracing::warn!(source = %jwks.source, error = %e, "could not read the JWKS again; keeping the keys it had")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWKS: &str = include_str!("../../tests/fixtures/jwt/jwks.json");

    /// The fixture JWKS with only the keys named.
    fn with_kids(kids: &[&str]) -> String {
        let mut doc: Value = serde_json::from_str(JWKS).unwrap();
        doc["keys"]
            .as_array_mut()
            .unwrap()
            .retain(|k| kids.contains(&k["kid"].as_str().unwrap()));
        doc.to_string()
    }

    fn kids(jwks: &Jwks) -> Vec<String> {
        jwks.keys().iter().filter_map(|k| k.kid.clone()).collect()
    }

    #[test]
    fn a_setting_is_a_url_when_it_says_http_and_a_file_otherwise() {
        let supabase = "https://abc.supabase.co/auth/v1/.well-known/jwks.json";
        assert_eq!(
            JwksSource::from_setting(supabase),
            Ok(JwksSource::Url(supabase.into()))
        );
        assert!(matches!(
            JwksSource::from_setting(" HTTP://127.0.0.1:9/jwks "),
            Ok(JwksSource::Url(u)) if u == "http://127.0.0.1:9/jwks"
        ));
        assert_eq!(
            JwksSource::from_setting("/etc/switchboard/jwks.json"),
            Ok(JwksSource::File("/etc/switchboard/jwks.json".into()))
        );
        assert!(JwksSource::from_setting("https://").is_err());
    }

    #[tokio::test]
    async fn a_file_is_read_again_and_a_bad_read_keeps_the_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, with_kids(&["rsa-1"])).unwrap();
        let jwks = Jwks::load(JwksSource::File(path.clone())).await.unwrap();
        assert_eq!(kids(&jwks), ["rsa-1"]);

        std::fs::write(&path, with_kids(&["rsa-1", "ec-1"])).unwrap();
        assert_eq!(jwks.reload().await, Ok(2));
        assert_eq!(kids(&jwks), ["rsa-1", "ec-1"]);

        std::fs::write(&path, "{\"keys\": [").unwrap();
        assert!(jwks.reload().await.is_err());
        std::fs::remove_file(&path).unwrap();
        let gone = jwks.reload().await.unwrap_err();
        assert!(gone.starts_with("cannot read "), "{gone}");
        assert_eq!(kids(&jwks), ["rsa-1", "ec-1"], "failed reads keep the keys");
    }

    #[tokio::test]
    async fn unknown_kids_read_the_source_at_most_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, with_kids(&["rsa-1"])).unwrap();
        let source = JwksSource::File(path.clone());
        let jwks = Jwks::load(source.clone())
            .await
            .unwrap()
            .kid_refresh_every(Duration::from_secs(3600));

        // The first unknown kid reads the file, which has the key by now.
        std::fs::write(&path, with_kids(&["rsa-1", "ec-1"])).unwrap();
        assert!(jwks.refresh_for_kid("ec-1").await);
        // A known kid needs no read; another unknown one within the interval gets none.
        assert!(jwks.refresh_for_kid("ec-1").await);
        std::fs::write(&path, with_kids(&["rsa-1", "ec-1", "ed-1"])).unwrap();
        assert!(!jwks.refresh_for_kid("ed-1").await);
        assert_eq!(kids(&jwks), ["rsa-1", "ec-1"]);

        // Without an interval, every unknown kid reads it.
        let eager = Jwks::load(source)
            .await
            .unwrap()
            .kid_refresh_every(Duration::ZERO);
        assert!(!eager.refresh_for_kid("made-up").await);
        std::fs::write(&path, with_kids(&["rsa-1"])).unwrap();
        assert!(!eager.refresh_for_kid("made-up").await);
        assert_eq!(
            kids(&eager),
            ["rsa-1"],
            "withdrawn keys are gone after a read"
        );
    }

    #[test]
    fn a_supabase_jwks_document_parses_with_its_extra_members() {
        // As `/auth/v1/.well-known/jwks.json` serves an ES256 key (members it adds to the
        // JWK: `ext`, `key_ops`), and a project without asymmetric keys: `{"keys":[]}`.
        let doc: Value = serde_json::from_str(JWKS).unwrap();
        let ec = doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == "ec-1")
            .unwrap();
        let supabase = serde_json::json!({"keys": [{
            "alg": "ES256", "crv": "P-256", "ext": true, "key_ops": ["verify"],
            "kid": "ec-1", "kty": "EC", "use": "sig", "x": ec["x"], "y": ec["y"],
        }]});
        let keys = parse(&supabase.to_string()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].algs, [jsonwebtoken::Algorithm::ES256]);
        assert!(parse("{\"keys\":[]}").unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_key_the_hub_cannot_use_is_skipped_and_the_others_verify() {
        let mut doc: Value = serde_json::from_str(&with_kids(&["ec-1"])).unwrap();
        let keys = doc["keys"].as_array_mut().unwrap();
        keys.insert(0, serde_json::json!({"kty": "EC", "crv": "P-521", "alg": "ES512", "kid": "es512", "x": "AA", "y": "AA"}));
        keys.push(serde_json::json!({"kty": "FOO", "kid": "foo"}));
        keys.push(serde_json::json!({"kty": "RSA", "kid": "bad", "n": "!!", "e": "AQAB"}));
        let parsed = parse(&doc.to_string()).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].kid.as_deref(), Some("ec-1"));

        // Read again with such a key beside a new one: the new one is taken.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, with_kids(&["rsa-1"])).unwrap();
        let jwks = Jwks::load(JwksSource::File(path.clone())).await.unwrap();
        std::fs::write(&path, doc.to_string()).unwrap();
        assert!(jwks.refresh_for_kid("ec-1").await);
        assert_eq!(kids(&jwks), ["ec-1"]);
    }

    #[tokio::test]
    async fn a_document_handed_in_is_never_read_again() {
        let jwks = Jwks::fixed(&with_kids(&["rsa-1"])).unwrap();
        assert!(!jwks.refresh_for_kid("ec-1").await);
        assert_eq!(jwks.reload().await, Ok(1));
        assert!(matches!(
            Jwks::fixed("{}"),
            Err(AuthError::InvalidJwks(e)) if e == "missing `keys` array"
        ));
    }
}
