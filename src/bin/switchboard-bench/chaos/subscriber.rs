//! The chaos subscribers: Rust WebSocket clients speaking the protocol (vsn 1.0.0 or
//! 2.0.0) through the proxy, one to three channels per connection, each channel bound to
//! the ticks and one data binding. They behave like realtime-js: heartbeats (every
//! second here, so a black hole is noticed within a few), reconnect with backoff when the
//! socket ends or a heartbeat goes unanswered, rejoin a channel the hub refused or
//! closed, and send the same `resume=` key on every reconnect when they have one. Each
//! channel records what it observed, in order, for the verdict.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::model::{Binding, Key, Op, Row, Table, Viewer, KINDS};

/// A heartbeat unanswered this long means the connection is dead (realtime-js: one
/// heartbeat interval).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(4);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A refused or closed channel joins again after this long.
const REJOIN_AFTER: Duration = Duration::from_secs(1);

/// One connection's identity and channels.
pub struct ConnSpec {
    pub index: usize,
    pub v2: bool,
    pub resume: Option<String>,
    pub viewer: Viewer,
    pub token: String,
    pub channels: Vec<ChanSpec>,
}

/// One channel: a subscriber of the report.
pub struct ChanSpec {
    pub sub: usize,
    pub topic: String,
    pub binding: Binding,
}

/// What a channel observed, in order.
#[derive(Debug, Clone)]
pub enum Obs {
    /// "Subscribed to PostgreSQL": a join of this channel is live (a channel session).
    Subscribed,
    /// The resume system message (resumable connections, after any replayed frames).
    Resume {
        recovered: bool,
        count: u64,
        message: String,
    },
    Change {
        key: Key,
        op: Op,
        table: Table,
        /// The row as the frame shows it (`None` when only the key is shown).
        row: Option<Row>,
    },
    /// A row of the tick table.
    Tick(i64),
    /// A join refused, a postgres_changes error, or a system message about row scope.
    Refused(String),
    /// The hub closed the channel (`phx_close` / `phx_error`).
    Closed(String),
}

/// What one connection task returns.
pub struct ConnResult {
    pub index: usize,
    pub obs: Vec<Vec<Obs>>,
    pub sockets: u32,
    pub connect_failures: u32,
    /// Why sockets ended: closed by the hub (with its code), heartbeat timeout, ...
    pub ends: Vec<String>,
}

/// The highest tick each channel has seen, readable while the run goes on.
pub type LiveTicks = Arc<Vec<AtomicI64>>;

/// Runs one connection until `stop`: connect via `via`, join, receive, reconnect.
pub async fn run_conn(
    spec: Arc<ConnSpec>,
    hub: SocketAddr,
    via: SocketAddr,
    ticks: LiveTicks,
    stop: CancellationToken,
) -> ConnResult {
    let mut out = ConnResult {
        index: spec.index,
        obs: vec![Vec::new(); spec.channels.len()],
        sockets: 0,
        connect_failures: 0,
        ends: Vec::new(),
    };
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let ws = match connect(&spec, hub, via).await {
            Ok(ws) => ws,
            Err(_) => {
                out.connect_failures += 1;
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        out.sockets += 1;
        let mut session = Session {
            spec: &spec,
            ws,
            obs: &mut out.obs,
            ticks: &ticks,
            next_ref: 0,
            states: vec![State::Retry(Instant::now()); spec.channels.len()],
        };
        let end = session.run(&stop).await;
        if end != "stopped" {
            out.ends.push(end);
        }
        let pause = rand::rng().random_range(50..300);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
        }
    }
    out
}

type Ws = WebSocketStream<TcpStream>;

async fn connect(spec: &ConnSpec, hub: SocketAddr, via: SocketAddr) -> Result<Ws, String> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(via))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let vsn = if spec.v2 { "2.0.0" } else { "1.0.0" };
    let mut url = format!(
        "ws://{hub}/realtime/v1/websocket?apikey={}&vsn={vsn}",
        spec.token
    );
    if let Some(key) = &spec.resume {
        url.push_str(&format!("&resume={key}"));
    }
    let handshake = tokio_tungstenite::client_async(url, tcp);
    match tokio::time::timeout(Duration::from_secs(5), handshake).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// A channel's state on the current socket.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Join (again) at this instant.
    Retry(Instant),
    /// Join sent with this ref; waiting for the reply.
    Joining(u64),
    /// Reply ok; waiting for "Subscribed to PostgreSQL".
    Replied,
    /// Subscribed; `replay` until the resume message came (resumable connections).
    Live { replay: bool },
}

struct Session<'a> {
    spec: &'a ConnSpec,
    ws: Ws,
    obs: &'a mut Vec<Vec<Obs>>,
    ticks: &'a LiveTicks,
    next_ref: u64,
    states: Vec<State>,
}

/// A decoded text frame: (ref, topic, event, payload).
fn parts(v: &Value) -> Option<(Option<&str>, &str, &str, &Value)> {
    match v {
        Value::Array(a) if a.len() == 5 => {
            Some((a[1].as_str(), a[2].as_str()?, a[3].as_str()?, &a[4]))
        }
        Value::Object(o) => Some((
            o.get("ref").and_then(Value::as_str),
            o.get("topic")?.as_str()?,
            o.get("event")?.as_str()?,
            o.get("payload")?,
        )),
        _ => None,
    }
}

impl Session<'_> {
    /// Runs until the socket ends, a heartbeat goes unanswered or `stop`; says why.
    async fn run(&mut self, stop: &CancellationToken) -> String {
        let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
        let mut pending_hb: Option<(String, Instant)> = None;
        let mut wake = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = self.ws.close(None).await;
                    return "stopped".into();
                }
                _ = heartbeat.tick() => {
                    if let Some((_, at)) = &pending_hb {
                        if at.elapsed() > HEARTBEAT_TIMEOUT {
                            return "heartbeat timeout".into();
                        }
                        continue;
                    }
                    let r = self.new_ref();
                    if self.send(None, Some(&r), "phoenix", "heartbeat", json!({})).await.is_err() {
                        return "send failed".into();
                    }
                    pending_hb = Some((r, Instant::now()));
                }
                _ = wake.tick() => {
                    if let Err(e) = self.join_due().await {
                        return e;
                    }
                }
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else { continue };
                        let Some((r, topic, event, payload)) = parts(&v) else { continue };
                        if topic == "phoenix" {
                            if pending_hb.as_ref().is_some_and(|(p, _)| Some(p.as_str()) == r) {
                                pending_hb = None;
                            }
                            continue;
                        }
                        if let Err(e) = self.on_frame(r, topic, event, payload).await {
                            return e;
                        }
                    }
                    Some(Ok(Message::Close(c))) => {
                        return format!("closed by the hub ({})", c.map_or(0, |c| u16::from(c.code)));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return format!("socket error: {e}"),
                    None => return "socket ended".into(),
                },
            }
        }
    }

    fn new_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    async fn send(
        &mut self,
        join_ref: Option<&str>,
        r: Option<&str>,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> Result<(), String> {
        let frame = if self.spec.v2 {
            json!([join_ref, r, topic, event, payload])
        } else {
            json!({"topic": topic, "event": event, "payload": payload, "ref": r, "join_ref": join_ref})
        };
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .map_err(|e| format!("send failed: {e}"))
    }

    /// Sends the joins that are due.
    async fn join_due(&mut self) -> Result<(), String> {
        let now = Instant::now();
        for i in 0..self.states.len() {
            let State::Retry(at) = self.states[i] else {
                continue;
            };
            if at > now {
                continue;
            }
            let ch = &self.spec.channels[i];
            let payload = json!({
                "config": {
                    "broadcast": {"self": false, "ack": false},
                    "presence": {"key": "", "enabled": false},
                    "postgres_changes": ch.binding.entries(),
                    "private": false,
                },
                "access_token": self.spec.token,
            });
            let topic = ch.topic.clone();
            let r = self.new_ref();
            self.send(Some(&r), Some(&r), &topic, "phx_join", payload)
                .await?;
            self.states[i] = State::Joining(r.parse().unwrap_or(0));
        }
        Ok(())
    }

    fn channel_of(&self, topic: &str) -> Option<usize> {
        self.spec.channels.iter().position(|c| c.topic == topic)
    }

    async fn on_frame(
        &mut self,
        r: Option<&str>,
        topic: &str,
        event: &str,
        payload: &Value,
    ) -> Result<(), String> {
        let Some(i) = self.channel_of(topic) else {
            return Ok(());
        };
        let retry = State::Retry(Instant::now() + REJOIN_AFTER);
        match event {
            "phx_reply" => {
                let State::Joining(join) = self.states[i] else {
                    return Ok(());
                };
                if r.and_then(|r| r.parse().ok()) != Some(join) {
                    return Ok(());
                }
                if payload["status"] == "ok" {
                    self.states[i] = State::Replied;
                } else {
                    let why = payload["response"]["reason"]
                        .as_str()
                        .unwrap_or("join refused");
                    self.obs[i].push(Obs::Refused(why.to_owned()));
                    self.states[i] = retry;
                }
            }
            "system" if payload["extension"] == "postgres_changes" => {
                let message = payload["message"].as_str().unwrap_or_default().to_owned();
                if let Some(recovered) = payload["recovered"].as_bool() {
                    self.obs[i].push(Obs::Resume {
                        recovered,
                        count: payload["count"].as_u64().unwrap_or(0),
                        message,
                    });
                    if let State::Live { replay } = &mut self.states[i] {
                        *replay = false;
                    }
                } else if payload["status"] == "ok" && message == "Subscribed to PostgreSQL" {
                    self.obs[i].push(Obs::Subscribed);
                    self.states[i] = State::Live {
                        replay: self.spec.resume.is_some(),
                    };
                } else {
                    // An entry the hub could not subscribe (e.g. the database was down),
                    // or a row-scope problem: leave and join again, as an app would.
                    self.obs[i].push(Obs::Refused(message));
                    let r = self.new_ref();
                    let topic = topic.to_owned();
                    self.send(None, Some(&r), &topic, "phx_leave", json!({}))
                        .await?;
                    self.states[i] = retry;
                }
            }
            "phx_close" | "phx_error" => {
                if matches!(self.states[i], State::Live { .. } | State::Replied) {
                    self.obs[i].push(Obs::Closed(event.to_owned()));
                    self.states[i] = retry;
                }
            }
            "postgres_changes" => {
                if let Some(o) = change_obs(&payload["data"]) {
                    if let Obs::Tick(k) = o {
                        self.ticks[self.spec.channels[i].sub].fetch_max(k, Ordering::Relaxed);
                    }
                    self.obs[i].push(o);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// A `postgres_changes` frame's data as an observation.
fn change_obs(data: &Value) -> Option<Obs> {
    let op = match data["type"].as_str()? {
        "INSERT" => Op::Insert,
        "UPDATE" => Op::Update,
        "DELETE" => Op::Delete,
        _ => return None,
    };
    let table_name = data["table"].as_str()?;
    if table_name == "chaos_ticks" {
        return data["record"]["k"].as_i64().map(Obs::Tick);
    }
    let table = Table::parse(table_name)?;
    let shown = if op == Op::Delete {
        &data["old_record"]
    } else {
        &data["record"]
    };
    let id = shown["id"].as_i64()?;
    let row = parse_row(shown);
    let key = match op {
        Op::Delete => Key::Delete(table as u8, id),
        _ => Key::Write(row?.stamp),
    };
    Some(Obs::Change {
        key,
        op,
        table,
        row,
    })
}

fn parse_row(v: &Value) -> Option<Row> {
    let owner = v["owner"].as_str()?;
    let owner = owner
        .rsplit('-')
        .next()?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)?;
    Some(Row {
        id: v["id"].as_i64()?,
        owner,
        n: v["n"].as_i64()? as i32,
        kind: KINDS.iter().position(|k| Some(*k) == v["kind"].as_str())?,
        stamp: v["stamp"].as_i64()?,
    })
}
