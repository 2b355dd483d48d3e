//! A hub started in-process on port 0 for protocol-level tests, and a raw WebSocket client
//! that speaks frames (v1 objects, v2 arrays, binary kind 3/4) with timeouts that fail
//! the test instead of hanging it.
//!
//! Negative checks ("nothing arrives") prefer [`WsClient::assert_quiet`]: a heartbeat is a
//! barrier, because the hub answers a connection's messages in order through the same
//! outbox that fan-out writes into. [`WsClient::expect_no_frame`] is the short timed
//! variant for the cases no barrier covers.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::config::Config;
use switchboard::RunError;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// How long `recv` waits for a frame before failing the test.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// The HS256 secret of [`test_config`].
pub const SECRET: &str = "hub-protocol-tests-secret-0123456789";

/// Defaults with [`SECRET`] and no database; tests shrink limits on it.
pub fn test_config() -> Config {
    let mut config = Config::for_tests(SECRET);
    if resumes_read_the_log() {
        config.resume_memory = Duration::ZERO;
    }
    config
}

/// Whether hubs in this test process replay every resumed gap from the log, keeping no
/// delivered batches in memory: test targets named `*_from_log` (see
/// `tests/resume_protocol_from_log.rs`).
pub fn resumes_read_the_log() -> bool {
    env!("CARGO_CRATE_NAME").ends_with("_from_log")
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A hub serving on 127.0.0.1:<ephemeral> until `stop` (or drop, which cancels it).
pub struct TestHub {
    pub addr: SocketAddr,
    pub secret: String,
    pub shutdown: CancellationToken,
    join: Option<JoinHandle<Result<(), RunError>>>,
}

impl TestHub {
    pub async fn start(config: Config) -> TestHub {
        let secret = config
            .jwt_secret
            .clone()
            .expect("TestHub needs a config with an HS256 secret");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let join = tokio::spawn(switchboard::run(config, listener, shutdown.clone()));
        TestHub {
            addr,
            secret,
            shutdown,
            join: Some(join),
        }
    }

    /// A hub with [`test_config`].
    pub async fn start_default() -> TestHub {
        TestHub::start(test_config()).await
    }

    /// Signs arbitrary claims with the hub's secret.
    pub fn mint(&self, claims: &Value) -> String {
        switchboard::auth::mint_hs256(&self.secret, claims).expect("mint token")
    }

    /// A token with `role`, `sub` and `exp = now + exp_in_secs` (negative: already expired).
    pub fn token(&self, role: &str, sub: &str, exp_in_secs: i64) -> String {
        self.mint(&json!({ "role": role, "sub": sub, "exp": now() + exp_in_secs }))
    }

    /// An `anon` token valid for an hour.
    pub fn anon(&self) -> String {
        self.token("anon", "anon-user", 3600)
    }

    /// `ws://.../realtime/v1/websocket?apikey=..&vsn=..`, leaving out absent parameters.
    pub fn ws_url(&self, vsn: Option<&str>, apikey: Option<&str>) -> String {
        self.ws_url_at("/realtime/v1/websocket", vsn, apikey)
    }

    pub fn ws_url_at(&self, path: &str, vsn: Option<&str>, apikey: Option<&str>) -> String {
        let mut params = Vec::new();
        if let Some(k) = apikey {
            params.push(format!("apikey={k}"));
        }
        if let Some(v) = vsn {
            params.push(format!("vsn={v}"));
        }
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{}", params.join("&"))
        };
        format!("ws://{}{path}{query}", self.addr)
    }

    /// `http://127.0.0.1:PORT<path>`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A v2 (`vsn=2.0.0`) client authenticated as `anon`.
    pub async fn connect_v2(&self) -> WsClient {
        WsClient::connect(&self.ws_url(Some("2.0.0"), Some(&self.anon()))).await
    }

    /// A v1 (`vsn=1.0.0`) client authenticated as `anon`.
    pub async fn connect_v1(&self) -> WsClient {
        WsClient::connect(&self.ws_url(Some("1.0.0"), Some(&self.anon()))).await
    }

    /// Cancels the shutdown token and awaits `run`'s result (fails the test after 15 s).
    pub async fn stop(mut self) -> Result<(), RunError> {
        self.shutdown.cancel();
        let join = self.join.take().expect("stop called once");
        tokio::time::timeout(Duration::from_secs(15), join)
            .await
            .expect("hub did not stop within 15 s")
            .expect("hub task panicked")
    }

    /// GETs `path` and returns (status, body text).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(self.http_url(path)).await.expect("GET");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    /// GETs an admin `path` (e.g. `/api/status`) with a service_role token.
    pub async fn get_admin(&self, path: &str) -> (u16, String) {
        let token = self.token("service_role", "test-admin", 3600);
        self.get_bearer(path, &token).await
    }

    /// GETs `path` with `credential` as the bearer (a token, an API key, the admin
    /// secret) and returns (status, body text).
    pub async fn get_bearer(&self, path: &str, credential: &str) -> (u16, String) {
        let resp = reqwest::Client::new()
            .get(self.http_url(path))
            .bearer_auth(credential)
            .send()
            .await
            .expect("GET");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    /// The value of one sample line of `/metrics` (e.g. `switchboard_connections`), if any.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await;
        text.lines().find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One frame from the hub.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A text frame, parsed (v2: 5-element array; v1: object).
    Text(Value),
    Binary(Vec<u8>),
    /// A close frame: (code, reason).
    Close(Option<(u16, String)>),
}

impl Frame {
    fn field(&self, v2_index: usize, v1_key: &str) -> Option<&Value> {
        match self {
            Frame::Text(Value::Array(a)) => a.get(v2_index),
            Frame::Text(Value::Object(o)) => o.get(v1_key),
            _ => None,
        }
    }

    pub fn json(&self) -> &Value {
        match self {
            Frame::Text(v) => v,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    pub fn topic(&self) -> Option<&str> {
        self.field(2, "topic").and_then(Value::as_str)
    }

    pub fn event(&self) -> Option<&str> {
        self.field(3, "event").and_then(Value::as_str)
    }

    pub fn payload(&self) -> &Value {
        self.field(4, "payload").unwrap_or(&Value::Null)
    }

    /// The `ref` slot (`None` when null or absent).
    pub fn ref_(&self) -> Option<&str> {
        self.field(1, "ref").and_then(Value::as_str)
    }

    /// The `join_ref` slot (v1 frames never carry it).
    pub fn join_ref(&self) -> Option<&str> {
        self.field(0, "join_ref").and_then(Value::as_str)
    }

    pub fn is_event(&self, event: &str) -> bool {
        self.event() == Some(event)
    }

    /// A `phx_reply` with this ref.
    pub fn is_reply_to(&self, ref_: &str) -> bool {
        self.is_event("phx_reply") && self.ref_() == Some(ref_)
    }

    pub fn close_code(&self) -> Option<u16> {
        match self {
            Frame::Close(Some((code, _))) => Some(*code),
            _ => None,
        }
    }
}

/// Serializer the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vsn {
    V1,
    V2,
}

/// A raw WebSocket client for the hub.
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub vsn: Vsn,
    next_ref: u64,
}

fn vsn_of(url: &str) -> Vsn {
    if url.contains("vsn=2") {
        Vsn::V2
    } else {
        Vsn::V1
    }
}

/// Why an upgrade failed: the HTTP status and body the hub answered with.
#[derive(Debug)]
pub struct Rejected {
    pub status: u16,
    pub body: String,
}

impl WsClient {
    /// Connects or fails the test; the serializer is read from the URL's `vsn`.
    pub async fn connect(url: &str) -> WsClient {
        match WsClient::try_connect(url).await {
            Ok(c) => c,
            Err(r) => panic!("connect {url} rejected: {r:?}"),
        }
    }

    /// Connects, or returns the HTTP rejection.
    pub async fn try_connect(url: &str) -> Result<WsClient, Rejected> {
        let connect = tokio_tungstenite::connect_async(url);
        let result = tokio::time::timeout(RECV_TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| panic!("connect {url} timed out"));
        match result {
            Ok((ws, _)) => Ok(WsClient {
                ws,
                vsn: vsn_of(url),
                next_ref: 100,
            }),
            Err(WsError::Http(resp)) => Err(Rejected {
                status: resp.status().as_u16(),
                body: String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
                    .into_owned(),
            }),
            Err(e) => panic!("connect {url} failed: {e}"),
        }
    }

    /// Connects with a small kernel receive buffer (no autotuning), so a client that stops
    /// reading backs up into the hub quickly.
    pub async fn connect_small_buffer(url: &str, recv_buffer: u32) -> WsClient {
        let addr: SocketAddr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .expect("ws://ip:port/... url");
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(recv_buffer).expect("SO_RCVBUF");
        let tcp = socket.connect(addr).await.expect("tcp connect");
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
            .await
            .expect("websocket handshake");
        WsClient {
            ws,
            vsn: vsn_of(url),
            next_ref: 100,
        }
    }

    /// A fresh ref, unique on this client.
    pub fn next_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send text frame");
    }

    /// Sends a text frame whose bytes are not UTF-8 (a raw frame: the client library
    /// refuses to build such a text message).
    pub async fn send_invalid_utf8_text(&mut self) {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame as RawFrame;
        let frame = RawFrame::message(vec![b'[', 0xff, 0xfe, b']'], OpCode::Data(Data::Text), true);
        self.ws
            .send(Message::Frame(frame))
            .await
            .expect("send raw text frame");
    }

    /// Sends `texts` as one burst: every frame is queued, then flushed once.
    pub async fn send_texts(&mut self, texts: &[String]) {
        for text in texts {
            self.ws
                .feed(Message::Text(text.as_str().into()))
                .await
                .expect("queue text frame");
        }
        self.ws.flush().await.expect("flush text frames");
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .expect("send binary frame");
    }

    /// `[join_ref, ref, topic, event, payload]`.
    pub async fn send_v2(
        &mut self,
        join_ref: Option<&str>,
        ref_: Option<&str>,
        topic: &str,
        event: &str,
        payload: Value,
    ) {
        let frame = json!([join_ref, ref_, topic, event, payload]);
        self.send_text(&frame.to_string()).await;
    }

    /// `{"topic","event","payload","ref","join_ref"}` (all five keys, as Python sends).
    pub async fn send_v1(
        &mut self,
        join_ref: Option<&str>,
        ref_: Option<&str>,
        topic: &str,
        event: &str,
        payload: Value,
    ) {
        let frame = json!({ "topic": topic, "event": event, "payload": payload, "ref": ref_, "join_ref": join_ref });
        self.send_text(&frame.to_string()).await;
    }

    /// Sends in this client's serializer.
    pub async fn send(
        &mut self,
        join_ref: Option<&str>,
        ref_: Option<&str>,
        topic: &str,
        event: &str,
        payload: Value,
    ) {
        match self.vsn {
            Vsn::V1 => self.send_v1(join_ref, ref_, topic, event, payload).await,
            Vsn::V2 => self.send_v2(join_ref, ref_, topic, event, payload).await,
        }
    }

    /// An `access_token` push (realtime-js `setAuth`) on `topic`'s channel; the hub never
    /// replies to it.
    pub async fn push_access_token(&mut self, join_ref: &str, topic: &str, token: Value) {
        let payload = json!({ "access_token": token });
        self.send(Some(join_ref), Some("t"), topic, "access_token", payload)
            .await;
    }

    /// The next frame (pings and pongs skipped); fails the test after [`RECV_TIMEOUT`] or
    /// if the connection ended without a close frame.
    pub async fn recv(&mut self) -> Frame {
        self.recv_within(RECV_TIMEOUT).await
    }

    /// The next frame within `wait`, or `None` when none came (the test goes on).
    pub async fn try_recv_within(&mut self, wait: Duration) -> Option<Frame> {
        tokio::time::timeout(wait, self.next_frame())
            .await
            .ok()
            .flatten()
    }

    /// [`WsClient::recv`] waiting up to `wait`: for what the hub sends on a timer.
    pub async fn recv_within(&mut self, wait: Duration) -> Frame {
        match tokio::time::timeout(wait, self.next_frame()).await {
            Ok(Some(f)) => f,
            Ok(None) => panic!("connection ended without a close frame"),
            Err(_) => panic!("no frame within {wait:?}"),
        }
    }

    /// `None` when the stream ended (or failed) without a close frame.
    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let msg = match self.ws.next().await? {
                Ok(m) => m,
                Err(_) => return None,
            };
            return Some(match msg {
                Message::Text(t) => Frame::Text(
                    serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("hub sent invalid JSON ({e}): {t}")),
                ),
                Message::Binary(b) => Frame::Binary(b.to_vec()),
                Message::Close(c) => Frame::Close(
                    c.map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string())),
                ),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            });
        }
    }

    /// The first frame matching `pred`, skipping others; fails the test after
    /// [`RECV_TIMEOUT`] (the skipped frames are listed in the message).
    pub async fn recv_until(&mut self, mut pred: impl FnMut(&Frame) -> bool) -> Frame {
        let mut skipped = Vec::new();
        let wait = async {
            loop {
                match self.next_frame().await {
                    Some(f) if pred(&f) => return Ok(f),
                    Some(f) => skipped.push(f),
                    None => return Err("connection ended"),
                }
            }
        };
        match tokio::time::timeout(RECV_TIMEOUT, wait).await {
            Ok(Ok(f)) => f,
            Ok(Err(why)) => panic!("{why} before the awaited frame; skipped: {skipped:?}"),
            Err(_) => {
                panic!("awaited frame not seen within {RECV_TIMEOUT:?}; skipped: {skipped:?}")
            }
        }
    }

    /// Fails the test if any frame arrives within `within` (a short negative check).
    pub async fn expect_no_frame(&mut self, within: Duration) {
        if let Ok(Some(f)) = tokio::time::timeout(within, self.next_frame()).await {
            panic!("expected no frame within {within:?}, got {f:?}");
        }
    }

    /// Waits for the hub's next ping (no data frame may come first) and sends its pong.
    /// On a resumable connection the hub pings after writing what it had queued, so once
    /// this returns the hub has that pong on the socket ahead of anything sent later: it
    /// acknowledges every frame received so far, even if the client drops right after.
    pub async fn acknowledge(&mut self) {
        let wait = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Ping(_))) => return,
                    Some(Ok(Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(other)) => panic!("expected a ping, got {other:?}"),
                    Some(Err(e)) => panic!("connection failed while waiting for a ping: {e}"),
                    None => panic!("connection ended while waiting for a ping"),
                }
            }
        };
        tokio::time::timeout(RECV_TIMEOUT, wait)
            .await
            .unwrap_or_else(|_| panic!("no ping within {RECV_TIMEOUT:?}"));
        // tungstenite queued the pong while reading the ping; flushing writes it.
        self.ws.flush().await.expect("pong sent");
    }

    /// Reads until the connection ends; returns the close frame's code, if one came.
    /// Data frames on the way are counted, not inspected.
    pub async fn recv_close(&mut self) -> (Option<u16>, usize) {
        let mut data_frames = 0;
        let wait = async {
            loop {
                match self.next_frame().await {
                    Some(Frame::Close(c)) => return c.map(|(code, _)| code),
                    Some(_) => data_frames += 1,
                    None => return None,
                }
            }
        };
        let code = tokio::time::timeout(RECV_TIMEOUT, wait)
            .await
            .unwrap_or_else(|_| panic!("connection not closed within {RECV_TIMEOUT:?}"));
        (code, data_frames)
    }

    /// Sends a heartbeat and returns its reply (skipping other frames).
    pub async fn heartbeat(&mut self) -> Frame {
        let r = self.next_ref();
        self.send(None, Some(&r), "phoenix", "heartbeat", json!({}))
            .await;
        self.recv_until(|f| f.topic() == Some("phoenix") && f.is_reply_to(&r))
            .await
    }

    /// Sends a push the hub handles in order after every push sent before it, even one
    /// still waiting on the database (a heartbeat is answered at once, ahead of such a
    /// push): an event other than `heartbeat` on the socket topic, which Phoenix answers
    /// with an `unmatched topic` error. Returns its ref; the reply is the barrier.
    pub async fn send_barrier(&mut self) -> String {
        let r = self.next_ref();
        self.send(None, Some(&r), "phoenix", "barrier", json!({}))
            .await;
        r
    }

    /// Asserts nothing was queued for this client before a heartbeat sent now: the very
    /// next frame must be that heartbeat's reply.
    pub async fn assert_quiet(&mut self) {
        let r = self.next_ref();
        self.send(None, Some(&r), "phoenix", "heartbeat", json!({}))
            .await;
        let f = self.recv().await;
        assert!(
            f.topic() == Some("phoenix") && f.is_reply_to(&r),
            "expected nothing before the heartbeat reply, got {f:?}"
        );
    }

    /// As [`WsClient::assert_quiet`], but also after pushes that may still wait on the
    /// database (a token refresh, a join): the barrier is handled after them
    /// ([`WsClient::send_barrier`]).
    pub async fn assert_quiet_after_pushes(&mut self) {
        let r = self.send_barrier().await;
        let f = self.recv().await;
        assert!(
            f.topic() == Some("phoenix") && f.is_reply_to(&r),
            "expected nothing before the barrier's reply, got {f:?}"
        );
    }

    /// Sends a `phx_join` (join_ref = ref) and returns (join_ref, reply).
    pub async fn join(&mut self, topic: &str, payload: Value) -> (String, Frame) {
        let r = self.next_ref();
        self.send(Some(&r), Some(&r), topic, "phx_join", payload)
            .await;
        let reply = self
            .recv_until(|f| f.topic() == Some(topic) && f.is_reply_to(&r))
            .await;
        (r, reply)
    }

    /// Joins with a `config` and fails the test unless the reply is ok. Returns the join_ref.
    pub async fn join_ok(&mut self, topic: &str, config: Value) -> String {
        let (join_ref, reply) = self.join(topic, json!({ "config": config })).await;
        assert_eq!(
            reply.payload()["status"],
            "ok",
            "join of {topic} failed: {reply:?}"
        );
        join_ref
    }

    /// Sends a text broadcast push; returns its ref.
    pub async fn broadcast(
        &mut self,
        join_ref: &str,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> String {
        let r = self.next_ref();
        let body = json!({ "type": "broadcast", "event": event, "payload": payload });
        self.send(Some(join_ref), Some(&r), topic, "broadcast", body)
            .await;
        r
    }

    /// Sends a presence push (`track` with a payload, `untrack`); returns its ref.
    pub async fn presence(
        &mut self,
        join_ref: &str,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> String {
        let r = self.next_ref();
        let body = json!({ "type": "presence", "event": event, "payload": payload });
        self.send(Some(join_ref), Some(&r), topic, "presence", body)
            .await;
        r
    }

    /// Closes the WebSocket politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Closes the WebSocket with code 1000 and `reason` (realtime-js closes so, with
    /// `heartbeat timeout`, when a heartbeat reply is missing).
    pub async fn close_with_reason(mut self, reason: &str) {
        let frame = CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: reason.to_owned().into(),
        };
        let _ = self.ws.close(Some(frame)).await;
    }
}

/// A kind-3 user broadcast push (client -> server), PROTOCOL.md §1.
pub fn kind3(
    join_ref: &str,
    ref_: &str,
    topic: &str,
    event: &str,
    meta: &str,
    encoding: u8,
    payload: &[u8],
) -> Vec<u8> {
    let len = |s: &str| u8::try_from(s.len()).expect("header field <= 255 bytes");
    let mut out = vec![
        3,
        len(join_ref),
        len(ref_),
        len(topic),
        len(event),
        len(meta),
        encoding,
    ];
    for part in [join_ref, ref_, topic, event, meta] {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// A decoded kind-4 user broadcast (server -> client).
#[derive(Debug, Clone, PartialEq)]
pub struct Kind4 {
    pub topic: String,
    pub event: String,
    pub meta: Vec<u8>,
    pub encoding: u8,
    pub payload: Vec<u8>,
}

/// Decodes a kind-4 frame; fails the test on any other shape.
pub fn kind4(frame: &Frame) -> Kind4 {
    let Frame::Binary(b) = frame else {
        panic!("expected a binary kind-4 frame, got {frame:?}");
    };
    assert!(b.len() >= 5 && b[0] == 4, "not a kind-4 frame: {b:?}");
    let (t, e, m) = (b[1] as usize, b[2] as usize, b[3] as usize);
    let body = &b[5..];
    assert!(
        body.len() >= t + e + m,
        "kind-4 frame shorter than its header says: {b:?}"
    );
    Kind4 {
        topic: String::from_utf8(body[..t].to_vec()).expect("utf-8 topic"),
        event: String::from_utf8(body[t..t + e].to_vec()).expect("utf-8 event"),
        meta: body[t + e..t + e + m].to_vec(),
        encoding: b[4],
        payload: body[t + e + m..].to_vec(),
    }
}
