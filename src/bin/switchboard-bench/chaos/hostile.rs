//! One hostile client, straight to the hub: join floods (past the per-second and
//! per-connection limits), broadcast floods (on its own topics and on the subscribers'),
//! oversize frames, and garbage (bad JSON, binary pushes whose lengths lie). It counts
//! how the hub answered; the run checks that nobody else lost anything meanwhile.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// What the hub answered, by kind (join errors by reason, closes by code, ...).
pub type HostileStats = BTreeMap<String, u64>;

type Ws = WebSocketStream<TcpStream>;

/// Attacks until `stop`, a round every second or so; `shared` are subscriber topics.
pub async fn run_hostile(
    hub: SocketAddr,
    apikey: String,
    shared: Vec<String>,
    oversize: usize,
    stop: CancellationToken,
) -> HostileStats {
    let mut stats = HostileStats::new();
    let mut round = 0u64;
    while !stop.is_cancelled() {
        round += 1;
        let attack = round % 4;
        let name = ["join flood", "broadcast flood", "oversize frame", "garbage"][attack as usize];
        *stats.entry(format!("rounds: {name}")).or_default() += 1;
        match connect(hub, &apikey).await {
            Some(mut ws) => {
                let sent = match attack {
                    0 => join_flood(&mut ws, round).await,
                    1 => {
                        let topic = shared[rand::rng().random_range(0..shared.len())].clone();
                        broadcast_flood(&mut ws, &topic, round).await
                    }
                    2 => ws.send(Message::text("x".repeat(oversize))).await.is_ok(),
                    _ => garbage(&mut ws).await,
                };
                if !sent {
                    *stats
                        .entry("send failed (closed by the hub)".into())
                        .or_default() += 1;
                }
                read_answers(&mut ws, &mut stats).await;
            }
            None => *stats.entry("connect failed".into()).or_default() += 1,
        }
        let pause = rand::rng().random_range(200..1200);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
        }
    }
    stats
}

async fn connect(hub: SocketAddr, apikey: &str) -> Option<Ws> {
    let tcp = TcpStream::connect(hub).await.ok()?;
    let url = format!("ws://{hub}/realtime/v1/websocket?apikey={apikey}&vsn=2.0.0");
    let config = WebSocketConfig::default()
        .max_frame_size(None)
        .max_message_size(None);
    let handshake = tokio_tungstenite::client_async_with_config(url, tcp, Some(config));
    match tokio::time::timeout(Duration::from_secs(5), handshake).await {
        Ok(Ok((ws, _))) => Some(ws),
        _ => None,
    }
}

fn join(topic: &str, r: u64) -> Message {
    let config = json!({"config": {"broadcast": {"self": false}, "presence": {"enabled": false}, "private": false}});
    Message::text(json!([r.to_string(), r.to_string(), topic, "phx_join", config]).to_string())
}

/// 300 joins at once: more than a second's allowance and than the channel limit.
async fn join_flood(ws: &mut Ws, round: u64) -> bool {
    for i in 0..300u64 {
        let topic = format!("realtime:hostile-{round}-{i}");
        if ws.feed(join(&topic, i + 1)).await.is_err() {
            return false;
        }
    }
    ws.flush().await.is_ok()
}

/// Joins `topic` and sends 400 broadcasts of 2 KB as fast as it can.
async fn broadcast_flood(ws: &mut Ws, topic: &str, round: u64) -> bool {
    if ws.send(join(topic, 1)).await.is_err() {
        return false;
    }
    let body = "y".repeat(2048);
    for i in 0..400u64 {
        let msg = json!(["1", (i + 2).to_string(), topic, "broadcast",
            {"type": "broadcast", "event": "flood", "payload": {"round": round, "body": body}}]);
        if ws.feed(Message::text(msg.to_string())).await.is_err() {
            return false;
        }
    }
    ws.flush().await.is_ok()
}

/// Bad JSON, a frame of the wrong shape, and binary pushes whose header lengths lie.
async fn garbage(ws: &mut Ws) -> bool {
    let lying = vec![3u8, 200, 200, 200, 200, 200, 0, b'x', b'y'];
    let truncated = vec![3u8, 1, 1, 9];
    let frames = [
        Message::text("{not json"),
        Message::text("[1,2,3]"),
        Message::text(json!({"topic": 5, "event": null}).to_string()),
        Message::binary(lying),
        Message::binary(truncated),
        Message::binary(vec![4u8; 64]),
    ];
    for f in frames {
        if ws.feed(f).await.is_err() {
            return false;
        }
    }
    ws.flush().await.is_ok()
}

/// Reads what the hub answers for a second (or until it closes), counting it.
async fn read_answers(ws: &mut Ws, stats: &mut HostileStats) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => break,
            Ok(None) | Ok(Some(Err(_))) => {
                *stats
                    .entry("socket ended without a close frame".into())
                    .or_default() += 1;
                return;
            }
            Ok(Some(Ok(m))) => m,
        };
        let key = match msg {
            Message::Close(c) => {
                let code = c.map_or(0, |c| u16::from(c.code));
                *stats
                    .entry(format!("closed by the hub: {code}"))
                    .or_default() += 1;
                return;
            }
            Message::Text(t) => {
                answer_kind(&serde_json::from_str(t.as_str()).unwrap_or(Value::Null))
            }
            Message::Binary(_) => "binary frame".into(),
            _ => continue,
        };
        *stats.entry(key).or_default() += 1;
    }
    let _ = ws.close(None).await;
}

fn answer_kind(v: &Value) -> String {
    let event = v[3].as_str().unwrap_or("?");
    let p = &v[4];
    match event {
        "phx_reply" if p["status"] == "ok" => "reply ok".into(),
        "phx_reply" => format!(
            "reply error: {}",
            p["response"]["reason"].as_str().unwrap_or("?")
        ),
        "system" => format!("system: {}", p["message"].as_str().unwrap_or("?")),
        other => other.to_owned(),
    }
}
