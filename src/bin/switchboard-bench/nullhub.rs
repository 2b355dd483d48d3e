//! The null hub: accepts the same vsn 2.0.0 clients as the hub, answers their joins, and
//! on a `start` command writes one pre-encoded frame per message to every member of each
//! topic as fast as the sockets take them. No routing, no Postgres, no JSON per
//! receiver, but the hub's own write path: the same socket settings, the same bounded
//! outboxes and the same writer tasks (`switchboard::server::writer`). Its figure is the
//! limit of this machine for the hub's way of writing a given frame to a given number of
//! clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message as AxumMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::serve::ListenerExt;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::protocol::{Close, WireFrame};
use switchboard::router::outbox::{outbox, OutboxTx};
use switchboard::server::writer::Writers;
use switchboard::server::{SOCKET_READ_BUFFER, SOCKET_WRITE_BUFFER};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::stats::now_us;
use crate::ws::MARKER;
use crate::BenchError;

/// Frames queued per connection before a blaster waits for that connection's writer.
const QUEUE: usize = 1024;
/// Bytes queued per connection (the frame count bounds first).
const QUEUE_BYTES: usize = 64 * 1024 * 1024;

struct Null {
    members: Mutex<HashMap<String, Vec<OutboxTx>>>,
    writers: Writers,
}

/// Serves until the process is killed.
pub async fn serve(listen: SocketAddr) -> Result<(), BenchError> {
    let listener = TcpListener::bind(listen).await?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let null = Arc::new(Null {
        members: Mutex::default(),
        writers: Writers::per_core(),
    });
    let app = axum::Router::new()
        .route("/realtime/v1/websocket", get(upgrade))
        .with_state(null);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn upgrade(State(null): State<Arc<Null>>, ws: WebSocketUpgrade) -> Response {
    ws.read_buffer_size(SOCKET_READ_BUFFER)
        .write_buffer_size(SOCKET_WRITE_BUFFER)
        .on_upgrade(move |socket| connection(socket, null))
}

fn text(v: &Value) -> WireFrame {
    WireFrame::Text(Bytes::from(v.to_string()))
}

async fn connection(socket: WebSocket, null: Arc<Null>) {
    let (sink, mut stream) = socket.split();
    let (tx, rx) = outbox(QUEUE, QUEUE_BYTES);
    let writer = null.writers.attach(sink, rx, None);
    while let Some(Ok(msg)) = stream.next().await {
        let AxumMessage::Text(msg) = msg else {
            continue;
        };
        let v: Value = serde_json::from_str(msg.as_str()).unwrap_or(Value::Null);
        let topic = v[2].as_str().unwrap_or("").to_owned();
        match v[3].as_str() {
            Some("phx_join") => {
                let reply = json!(["1", v[1], topic, "phx_reply", {"status": "ok", "response": {"postgres_changes": []}}]);
                let _ = tx.push(text(&reply));
                if v[4]["config"]["postgres_changes"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
                {
                    let sys = json!(["1", null, topic, "system", {"message": "Subscribed to PostgreSQL", "status": "ok", "extension": "postgres_changes", "channel": topic}]);
                    let _ = tx.push(text(&sys));
                }
                null.members
                    .lock()
                    .expect("members lock")
                    .entry(topic)
                    .or_default()
                    .push(tx.clone());
            }
            Some("start") => {
                let seconds = v[4]["seconds"].as_f64().unwrap_or(10.0);
                let template = v[4]["template"].as_str().unwrap_or("").to_owned();
                let binary = v[4]["binary"].as_bool().unwrap_or(false);
                tokio::spawn(blast(
                    null.clone(),
                    Duration::from_secs_f64(seconds),
                    template,
                    binary,
                ));
            }
            _ => {}
        }
    }
    tx.close(Close::Gone);
    writer.finish(Duration::from_secs(1)).await;
}

/// Members one blasting task writes to; several tasks let the runtime use every core.
const MEMBERS_PER_BLASTER: usize = 250;
/// Frames a blaster queues to each member before it lets the writers run: a saturated
/// hub's writers likewise find several frames per socket (a batch of changes, or their
/// own lag), and one frame per write would measure write calls, not the write path.
const BLAST_BURST: usize = 16;
/// A blaster waits while any of its members has this many frames queued: the writers
/// always find frames to batch (as a saturated hub's do) and no push overflows.
const BLAST_BACKLOG: usize = QUEUE / 2;

/// Writes frames made from `template` (its `sent_at_us` set to now) to every member of
/// each topic until `length` has passed, one task per [`MEMBERS_PER_BLASTER`] members:
/// each frame is encoded once and queued to every member, as the hub's fan-out does.
async fn blast(null: Arc<Null>, length: Duration, template: String, binary: bool) {
    let Some(at) = template.find(MARKER).map(|i| i + MARKER.len()) else {
        return;
    };
    let digits_end = template[at..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(template.len(), |i| at + i);
    let prefix: Arc<str> = template[..at].into();
    let suffix: Arc<str> = template[digits_end..].into();
    let groups: Vec<Vec<OutboxTx>> = null
        .members
        .lock()
        .expect("members lock")
        .values()
        .flat_map(|g| {
            g.chunks(MEMBERS_PER_BLASTER)
                .map(<[_]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    let end = Instant::now() + length;
    for group in groups {
        let (prefix, suffix) = (prefix.clone(), suffix.clone());
        tokio::spawn(async move {
            while Instant::now() < end {
                let behind = |m: &OutboxTx| !m.is_closed() && m.queued_frames() >= BLAST_BACKLOG;
                if group.iter().any(behind) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                for _ in 0..BLAST_BURST {
                    let bytes = Bytes::from(format!("{prefix}{}{suffix}", now_us()));
                    let frame = if binary {
                        WireFrame::Binary(bytes)
                    } else {
                        WireFrame::Text(bytes)
                    };
                    for member in &group {
                        let _ = member.push(frame.clone());
                    }
                }
                // Let the writers run between rounds.
                tokio::task::yield_now().await;
            }
        });
    }
}

/// A null hub in a child process of this program; killed on drop.
pub struct NullHub {
    pub addr: SocketAddr,
    child: Child,
}

impl NullHub {
    pub async fn start() -> Result<NullHub, BenchError> {
        let port = crate::env::free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("valid address");
        let child = Command::new(std::env::current_exe()?)
            .args(["nullhub", "--listen", &addr.to_string()])
            .stdin(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if Instant::now() > deadline {
                return Err(BenchError::Setup("null hub did not start".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(NullHub { addr, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tells the null hub to write `sample`-shaped frames for `length`.
    pub async fn start_blast(&self, sample: &Message, length: Duration) -> Result<(), BenchError> {
        let (template, binary) = match sample {
            Message::Text(t) => (t.as_str().to_owned(), false),
            Message::Binary(b) => (String::from_utf8_lossy(b).into_owned(), true),
            _ => return Err(BenchError::Setup("no sample frame to replay".into())),
        };
        let mut ctl = crate::ws::connect(self.addr, 0, "control").await?;
        let start = json!([null, "1", "bench", "start", {"seconds": length.as_secs_f64(), "template": template, "binary": binary}]);
        ctl.send(Message::text(start.to_string()))
            .await
            .map_err(|e| BenchError::Ws(e.to_string()))?;
        // Keep the control socket open until the blast is over.
        tokio::spawn(async move {
            tokio::time::sleep(length + Duration::from_secs(1)).await;
            drop(ctl);
        });
        Ok(())
    }
}

impl Drop for NullHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
