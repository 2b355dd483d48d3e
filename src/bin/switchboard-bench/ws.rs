//! The load generator's WebSocket clients: connect from a spread of loopback source
//! addresses, join a channel with vsn 2.0.0 frames, then receive (and optionally send
//! broadcasts) while recording send-to-receipt latency from the `sent_at_us` field.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::stats::{now_us, ClientStats};
use crate::BenchError;

pub type Ws = WebSocketStream<TcpStream>;

/// Clients per loopback source address (the ephemeral port range holds ~28,000).
const CLIENTS_PER_SOURCE_IP: usize = 15_000;
/// The hub closes sockets silent for 60 s; heartbeats keep long setups alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(20);
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// The key whose number is the sender's clock in microseconds.
pub const MARKER: &str = "\"sent_at_us\":";

/// Source address for the `index`-th client: 127.0.0.2, then .3 after 15,000 clients, ...
pub fn source_ip(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        2 + (index / CLIENTS_PER_SOURCE_IP) as u8,
    ))
}

/// Opens a vsn 2.0.0 socket to `hub` as client number `index` with `apikey`.
pub async fn connect(hub: SocketAddr, index: usize, apikey: &str) -> Result<Ws, BenchError> {
    connect_with(hub, index, apikey, "").await
}

/// [`connect`] with `query` (`&name=value…`) added to the URL, e.g. a `resume=` key.
pub async fn connect_with(
    hub: SocketAddr,
    index: usize,
    apikey: &str,
    query: &str,
) -> Result<Ws, BenchError> {
    let socket = TcpSocket::new_v4()?;
    let source = source_ip(index);
    socket.bind(SocketAddr::new(source, 0))?;
    let stuck = |step: &str| {
        BenchError::Ws(format!(
            "{step} of socket {index} (from {source}) to {hub} timed out"
        ))
    };
    let stream = tokio::time::timeout(SETUP_TIMEOUT, socket.connect(hub))
        .await
        .map_err(|_| stuck("TCP connect"))??;
    stream.set_nodelay(true)?;
    let url = format!("ws://{hub}/realtime/v1/websocket?apikey={apikey}&vsn=2.0.0{query}");
    let (ws, _) = tokio::time::timeout(SETUP_TIMEOUT, tokio_tungstenite::client_async(url, stream))
        .await
        .map_err(|_| stuck("WebSocket upgrade"))?
        .map_err(|e| BenchError::Ws(e.to_string()))?;
    Ok(ws)
}

/// What a channel joins for.
#[derive(Clone)]
pub struct JoinSpec {
    pub topic: String,
    /// `postgres_changes` entries; when non-empty the join waits for "Subscribed".
    pub changes: Vec<Value>,
    pub presence_key: Option<String>,
    pub access_token: String,
}

/// Joins with join_ref "1"; waits for the ok reply (and, with postgres_changes, for the
/// system message that says changes from now on are delivered).
pub async fn join(ws: &mut Ws, spec: &JoinSpec) -> Result<(), BenchError> {
    let config = json!({
        "broadcast": {"self": false, "ack": false},
        "presence": {"key": spec.presence_key.clone().unwrap_or_default(), "enabled": spec.presence_key.is_some()},
        "postgres_changes": spec.changes,
        "private": false,
    });
    let frame = json!(["1", "1", spec.topic, "phx_join", {"config": config, "access_token": spec.access_token}]);
    ws.send(Message::text(frame.to_string()))
        .await
        .map_err(|e| BenchError::Ws(e.to_string()))?;
    let replied = std::cell::Cell::new(false);
    let subscribed = std::cell::Cell::new(spec.changes.is_empty());
    let wait = async {
        while !(replied.get() && subscribed.get()) {
            let (v, text) = next_text(ws, "during join").await?;
            match v[3].as_str() {
                Some("phx_reply") if v[1] == "1" => {
                    if v[4]["status"] != "ok" {
                        return Err(BenchError::Ws(format!("join refused: {text}")));
                    }
                    replied.set(true);
                }
                Some("system") if v[4]["extension"] == "postgres_changes" => {
                    if v[4]["status"] != "ok" {
                        return Err(BenchError::Ws(format!("postgres_changes refused: {text}")));
                    }
                    subscribed.set(true);
                }
                _ => {}
            }
        }
        Ok(())
    };
    tokio::time::timeout(SETUP_TIMEOUT, wait)
        .await
        .map_err(|_| {
            BenchError::Ws(format!(
                "join of {} timed out (reply {}, subscribed message {})",
                spec.topic,
                if replied.get() { "received" } else { "missing" },
                if subscribed.get() {
                    "received"
                } else {
                    "missing"
                },
            ))
        })?
}

/// The next text frame, parsed (`Null` if it is not JSON) and as sent; an error names
/// `when` if the socket closes first.
pub async fn next_text(ws: &mut Ws, when: &str) -> Result<(Value, String), BenchError> {
    loop {
        let msg = ws
            .next()
            .await
            .ok_or_else(|| BenchError::Ws(format!("closed {when}")))?
            .map_err(|e| BenchError::Ws(e.to_string()))?;
        if let Message::Text(text) = msg {
            let text = text.to_string();
            return Ok((serde_json::from_str(&text).unwrap_or(Value::Null), text));
        }
    }
}

/// The number after [`MARKER`] in a frame, if any.
pub fn sent_at(frame: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(frame).ok()?;
    let at = text.find(MARKER)? + MARKER.len();
    let digits = text[at..].trim_start();
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Counters shared by all clients of a run.
#[derive(Default)]
pub struct Shared {
    /// Sockets closed by the peer (or failed) before the run ended.
    pub closed: AtomicU64,
    /// Broadcasts sent by members.
    pub sent: AtomicU64,
    /// The first timed frame seen, as a template for the null hub.
    pub sample: OnceLock<Message>,
}

/// Sends a broadcast every `every` on `topic` (join_ref "1").
pub struct Sender {
    pub topic: String,
    pub every: Duration,
    /// When the first send is due (spreads members over the period).
    pub offset: Duration,
}

/// Receives until `stop`: records each timed frame in `stats`, answers nothing, sends
/// heartbeats, and sends broadcasts when `sender` is set.
pub async fn run_client(
    mut ws: Ws,
    stats: Arc<ClientStats>,
    shared: Arc<Shared>,
    sender: Option<Sender>,
    stop: CancellationToken,
) {
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + HEARTBEAT_EVERY,
        HEARTBEAT_EVERY,
    );
    let (mut tick, topic) = match &sender {
        Some(s) => {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + s.offset, s.every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            (Some(i), s.topic.clone())
        }
        None => (None, String::new()),
    };
    let mut next_ref: u64 = 2;
    loop {
        let send_due = async {
            match tick.as_mut() {
                Some(i) => i.tick().await,
                None => std::future::pending().await,
            }
        };
        let out = tokio::select! {
            _ = stop.cancelled() => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => { on_frame(t.as_bytes(), &stats, &shared, || Message::Text(t.clone())); None }
                Some(Ok(Message::Binary(b))) => { on_frame(&b, &stats, &shared, || Message::Binary(b.clone())); None }
                Some(Ok(_)) => None,
                _ => { shared.closed.fetch_add(1, Ordering::Relaxed); return; }
            },
            _ = heartbeat.tick() => Some(format!("[null,\"{next_ref}\",\"phoenix\",\"heartbeat\",{{}}]")),
            _ = send_due => {
                shared.sent.fetch_add(1, Ordering::Relaxed);
                Some(format!(
                    "[\"1\",\"{next_ref}\",\"{topic}\",\"broadcast\",{{\"type\":\"broadcast\",\"event\":\"tick\",\"payload\":{{\"sent_at_us\":{}}}}}]",
                    now_us()
                ))
            }
        };
        if let Some(text) = out {
            next_ref += 1;
            if ws.send(Message::text(text)).await.is_err() {
                shared.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    let _ = ws.close(None).await;
}

fn on_frame(bytes: &[u8], stats: &ClientStats, shared: &Shared, msg: impl FnOnce() -> Message) {
    if let Some(sent) = sent_at(bytes) {
        stats.record(sent);
        if shared.sample.get().is_none() {
            let _ = shared.sample.set(msg());
        }
    }
}

/// Connects and joins `count` clients (numbered from `first_index`), `parallel` at a time.
pub async fn open_many(
    hub: SocketAddr,
    first_index: usize,
    count: usize,
    parallel: usize,
    spec_of: impl Fn(usize) -> (String, Option<JoinSpec>),
) -> Result<Vec<Ws>, BenchError> {
    open_many_with(hub, first_index, count, parallel, |i| {
        let (apikey, spec) = spec_of(i);
        (apikey, spec, String::new())
    })
    .await
}

/// [`open_many`], client `i` connecting with the URL query `spec_of(i).2` added
/// (see [`connect_with`]).
pub async fn open_many_with(
    hub: SocketAddr,
    first_index: usize,
    count: usize,
    parallel: usize,
    spec_of: impl Fn(usize) -> (String, Option<JoinSpec>, String),
) -> Result<Vec<Ws>, BenchError> {
    let jobs = (0..count).map(|i| {
        let (apikey, spec, query) = spec_of(i);
        async move {
            let mut ws = connect_with(hub, first_index + i, &apikey, &query).await?;
            if let Some(spec) = spec {
                join(&mut ws, &spec).await?;
            }
            Ok::<Ws, BenchError>(ws)
        }
    });
    futures_util::stream::iter(jobs)
        .buffered(parallel)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}
