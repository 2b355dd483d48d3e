//! The JWKS read from a file or an http(s) URL, and read again while the hub runs: a key
//! rotated in verifies its first token without a restart (at connect and at join), a
//! withdrawn key stops verifying, a failed read keeps the keys, tokens with made-up kids
//! do not make the hub fetch in a loop, and a URL that cannot be read fails the start.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::hub::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use switchboard::auth::JwksSource;

const JWKS: &str = include_str!("fixtures/jwt/jwks.json");

/// The fixture JWKS with only the keys named.
fn with_kids(kids: &[&str]) -> String {
    let mut doc: Value = serde_json::from_str(JWKS).unwrap();
    doc["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| kids.contains(&k["kid"].as_str().unwrap()));
    doc.to_string()
}

/// An `authenticated` token for an hour, signed with the fixture key of `alg`, naming `kid`.
fn signed(alg: Algorithm, kid: &str) -> String {
    signed_as(alg, kid, "authenticated")
}

/// A token of `role` for an hour, signed with the fixture key of `alg`, naming `kid`.
fn signed_as(alg: Algorithm, kid: &str, role: &str) -> String {
    let key = match alg {
        Algorithm::ES256 => {
            EncodingKey::from_ec_pem(include_bytes!("fixtures/jwt/ec_private.pem")).unwrap()
        }
        Algorithm::EdDSA => {
            EncodingKey::from_ed_pem(include_bytes!("fixtures/jwt/ed_private.pem")).unwrap()
        }
        other => panic!("no fixture key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    let claims = json!({"role": role, "sub": "user-1", "exp": now() + 3600});
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// The 401 text for a token whose kid no key has (a join reply adds `JwtSignerError: `).
fn signer_error(kid: &str) -> String {
    format!("Failed to generate JWT signer for key ID (kid) \"{kid}\", check your JWT secret or JWKS configuration")
}

/// Connects with `apikey`: `Ok` when upgraded, else the 401's `error` text.
async fn connect(hub: &TestHub, apikey: &str) -> Result<WsClient, String> {
    match WsClient::try_connect(&hub.ws_url(Some("2.0.0"), Some(apikey))).await {
        Ok(c) => Ok(c),
        Err(r) => {
            assert_eq!(r.status, 401, "{}", r.body);
            let body: Value = serde_json::from_str(&r.body).unwrap();
            Err(body["error"].as_str().unwrap().to_owned())
        }
    }
}

/// A hub whose JWKS is a file holding `rsa-1` only, read again only for unknown kids (each
/// time one comes); the file's directory lives as long as the first value.
async fn hub_on_jwks_file() -> (tempfile::TempDir, std::path::PathBuf, TestHub) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, with_kids(&["rsa-1"])).unwrap();
    let mut config = test_config();
    config.jwks = Some(JwksSource::File(path.clone()));
    config.jwks_refresh = None;
    config.jwks_kid_refresh_every = Duration::ZERO;
    let hub = TestHub::start(config).await;
    (dir, path, hub)
}

#[tokio::test]
async fn a_key_added_to_the_jwks_file_verifies_its_first_token_at_connect_and_at_join() {
    let (_dir, path, hub) = hub_on_jwks_file().await;

    let ec = signed(Algorithm::ES256, "ec-1");
    assert_eq!(connect(&hub, &ec).await.err(), Some(signer_error("ec-1")));

    // Rotated in: the next token naming it makes the hub read the file, then verifies.
    std::fs::write(&path, with_kids(&["rsa-1", "ec-1"])).unwrap();
    let mut c = connect(&hub, &ec)
        .await
        .expect("the rotated-in key verifies");
    c.heartbeat().await;

    // A join's access_token signed with a key added since is read for, too.
    std::fs::write(&path, with_kids(&["rsa-1", "ec-1", "ed-1"])).unwrap();
    let ed = signed(Algorithm::EdDSA, "ed-1");
    let (_, reply) = c
        .join(
            "realtime:room",
            json!({"config": {"broadcast": {"self": true}}, "access_token": ed}),
        )
        .await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
}

/// The admin API and the inspector's sign-in read the JWKS again for an unknown kid too:
/// before, a service_role token signed with a key rotated in was refused there until the
/// next periodic read.
#[tokio::test]
async fn a_service_role_token_signed_with_a_key_rotated_in_opens_the_admin_api_at_once() {
    let (_dir, path, hub) = hub_on_jwks_file().await;
    let ec = signed_as(Algorithm::ES256, "ec-1", "service_role");
    let (code, body) = hub.get_bearer("/api/status", &ec).await;
    assert_eq!(code, 401, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], signer_error("ec-1"));

    std::fs::write(&path, with_kids(&["rsa-1", "ec-1"])).unwrap();
    let (code, body) = hub.get_bearer("/api/status", &ec).await;
    assert_eq!(code, 200, "{body}");

    // The inspector's sign-in, with a key added after that.
    std::fs::write(&path, with_kids(&["rsa-1", "ec-1", "ed-1"])).unwrap();
    let ed = signed_as(Algorithm::EdDSA, "ed-1", "service_role");
    let resp = reqwest::Client::new()
        .post(hub.http_url("/inspector/api/session"))
        .json(&json!({ "credential": ed }))
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    assert_eq!(code, 200, "{body}");
}

/// A JWKS endpoint: answers `status` with `body`, counting requests.
#[derive(Clone)]
struct Endpoint {
    answer: Arc<Mutex<(u16, String)>>,
    requests: Arc<AtomicUsize>,
    url: String,
}

impl Endpoint {
    async fn start(body: String) -> Endpoint {
        let answer = Arc::new(Mutex::new((200, body)));
        let requests = Arc::new(AtomicUsize::new(0));
        let (a, n) = (answer.clone(), requests.clone());
        let app = axum::Router::new().route(
            "/auth/v1/.well-known/jwks.json",
            axum::routing::get(move || {
                let (a, n) = (a.clone(), n.clone());
                async move {
                    n.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = a.lock().unwrap().clone();
                    (axum::http::StatusCode::from_u16(status).unwrap(), body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/auth/v1/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Endpoint {
            answer,
            requests,
            url,
        }
    }

    fn answer(&self, status: u16, body: String) {
        *self.answer.lock().unwrap() = (status, body);
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Waits until the endpoint has answered `more` requests past `from`.
    async fn answered(&self, from: usize, more: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.requests() < from + more {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the hub reads the JWKS again");
    }
}

#[tokio::test]
async fn a_jwks_url_is_read_again_a_failed_read_keeps_its_keys_and_a_withdrawn_key_stops_verifying()
{
    let endpoint = Endpoint::start(with_kids(&["rsa-1", "ec-1"])).await;
    let mut config = test_config();
    config.jwks = Some(JwksSource::Url(endpoint.url.clone()));
    config.jwks_refresh = Some(Duration::from_millis(100));
    let hub = TestHub::start(config).await;
    let ec = signed(Algorithm::ES256, "ec-1");
    connect(&hub, &ec)
        .await
        .expect("a key of the URL's JWKS verifies");

    // The endpoint fails: the keys read before stay.
    endpoint.answer(500, "down".into());
    endpoint.answered(endpoint.requests(), 2).await;
    connect(&hub, &ec)
        .await
        .expect("a failed read keeps the keys");
    endpoint.answer(200, "{\"keys\": [".into());
    endpoint.answered(endpoint.requests(), 2).await;
    connect(&hub, &ec)
        .await
        .expect("a document that does not parse keeps the keys");

    // The key is withdrawn: once read, its tokens are refused.
    endpoint.answer(200, with_kids(&["rsa-1"]));
    endpoint.answered(endpoint.requests(), 1).await;
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match connect(&hub, &ec).await {
                Err(e) => return e,
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("a withdrawn key stops verifying");
    assert_eq!(refused, signer_error("ec-1"));
}

#[tokio::test]
async fn tokens_with_made_up_kids_read_a_jwks_url_once_per_interval() {
    let endpoint = Endpoint::start(with_kids(&["rsa-1"])).await;
    let mut config = test_config();
    config.jwks = Some(JwksSource::Url(endpoint.url.clone()));
    config.jwks_refresh = None;
    let hub = TestHub::start(config).await;
    // The start read it once; readiness of the socket proves the start is done.
    let mut c = connect(&hub, &hub.anon()).await.unwrap();
    c.heartbeat().await;
    assert_eq!(endpoint.requests(), 1);

    for i in 0..20 {
        let kid = format!("made-up-{i}");
        let token = signed(Algorithm::ES256, &kid);
        assert_eq!(connect(&hub, &token).await.err(), Some(signer_error(&kid)));
    }
    // One read for the first unknown kid; the rest fall within its 10 s.
    assert_eq!(endpoint.requests(), 2);
}

#[tokio::test]
async fn a_jwks_url_that_cannot_be_read_fails_the_start_saying_why() {
    let endpoint = Endpoint::start(String::new()).await;
    endpoint.answer(404, "no such project".into());
    for (url, says) in [
        (endpoint.url.clone(), "answered HTTP 404".to_owned()),
        (
            "http://127.0.0.1:1/jwks.json".to_owned(),
            "cannot fetch http://127.0.0.1:1/jwks.json".to_owned(),
        ),
    ] {
        let mut config = test_config();
        config.jwks = Some(JwksSource::Url(url));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let err = switchboard::run(config, listener, shutdown)
            .await
            .expect_err("the start fails");
        assert!(err.to_string().contains(&says), "{err}");
    }
}
