//! `floor`: commit-to-client latency of the hub against the floor, a minimal LISTEN/NOTIFY
//! forwarder, in one invocation: the same number of clients, joined the same way, get the
//! same rows (inserted into `bench_events` at the same rate by the same writers) from the
//! same Postgres. The hub reads them through capture (the forwarder's trigger is off);
//! the floor gets each row in a per-row `pg_notify` (capture is off) and writes one
//! pre-built frame to every client. Optionally a second hub binary (`--baseline-hub-bin`)
//! runs the same window, for before/after figures from one run.
//!
//! The forwarder itself (`floor-serve`) runs as a separate process, like the null hub.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_tungstenite::tungstenite::Message;

use crate::fanout::changes_window;
use crate::pgload::Write;
use crate::run::Clients;
use crate::stats::report;
use crate::ws::{self, JoinSpec};
use crate::{env, pgload, BenchError, Common};

#[derive(Args)]
pub struct FloorArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscribers (one socket each).
    #[arg(long, default_value_t = 200)]
    pub subscribers: usize,
    /// Rows inserted per second (one per transaction).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Postgres connections writing.
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    /// Rounds of (hub, baseline hub, floor); each is reported.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// A second hub binary run in the same way after the hub (e.g. a build of main).
    #[arg(long)]
    pub baseline_hub_bin: Option<PathBuf>,
}

const TOPIC: &str = "realtime:latency";
/// The NOTIFY channel of the floor's trigger.
const CHANNEL: &str = "bench_floor";

const FLOOR_ON: &str = r#"
select realtime.disable('public.bench_events');
create or replace function public.bench_floor_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('bench_floor', json_build_object(
        'schema', tg_table_schema, 'table', tg_table_name,
        'commit_timestamp', to_char(now() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'type', tg_op, 'record', row_to_json(new), 'errors', null)::text);
    return null;
end $$;
create trigger bench_floor after insert on public.bench_events
    for each row execute function public.bench_floor_notify();
"#;

const FLOOR_OFF: &str = r#"
drop trigger if exists bench_floor on public.bench_events;
select realtime.enable('public.bench_events');
"#;

fn join_spec(token: String) -> (String, Option<JoinSpec>) {
    let spec = JoinSpec {
        topic: TOPIC.into(),
        changes: vec![json!({"event": "INSERT", "schema": "public", "table": "bench_events"})],
        presence_key: None,
        access_token: token.clone(),
    };
    (token, Some(spec))
}

pub async fn floor(a: FloorArgs) -> Result<(), BenchError> {
    let c = &a.common;
    let (_pg, url) = c.database().await?;
    pgload::setup(&url, 0).await?;
    let admin = pgload::connect(&url).await?;
    let mut record =
        json!({"subscribers": a.subscribers, "rate": a.rate, "writers": a.writers, "rounds": []});
    let mut lines = Vec::new();
    for round in 0..a.rounds.max(1) {
        let mut windows = serde_json::Map::new();
        let mut bins = vec![("hub", c.hub_bin()?)];
        if let Some(b) = &a.baseline_hub_bin {
            bins.push(("baseline", b.clone()));
        }
        for (name, bin) in bins {
            let hub = c.start_hub_bin(&bin, Some(&url), Vec::new()).await?;
            let sockets = ws::open_many(hub.addr, 0, a.subscribers, c.parallel, |i| {
                join_spec(hub.token(&pgload::customer_id(i)))
            })
            .await?;
            let w = latency_window(&a, sockets, hub.pid, &url).await?;
            windows.insert(name.into(), w);
        }
        admin.batch_execute(FLOOR_ON).await?;
        let result = async {
            let server = FloorServer::start(&url).await?;
            let sockets = ws::open_many(server.addr, 0, a.subscribers, c.parallel, |i| {
                join_spec(format!("c{i}"))
            })
            .await?;
            latency_window(&a, sockets, Some(server.pid()), &url).await
        }
        .await;
        admin.batch_execute(FLOOR_OFF).await?;
        windows.insert("floor".into(), result?);
        lines.push(round_line(round, &windows));
        record["rounds"]
            .as_array_mut()
            .expect("rounds array")
            .push(Value::Object(windows));
    }
    let summary = format!(
        "{} subscribers, {} rows/s: {}",
        a.subscribers,
        a.rate,
        lines.join("; ")
    );
    report("floor", &summary, record);
    Ok(())
}

/// One window at the fixed rate on `sockets` (then closed).
async fn latency_window(
    a: &FloorArgs,
    sockets: Vec<ws::Ws>,
    pid: Option<u32>,
    url: &str,
) -> Result<Value, BenchError> {
    let clients = Clients::spawn(sockets, |_| None);
    let out = changes_window(
        &clients,
        pid,
        url,
        a.writers,
        Write::Insert,
        a.rate,
        a.common.window(),
        a.subscribers as u64,
        Duration::from_secs(30),
    )
    .await?;
    clients.stop().await;
    Ok(out)
}

fn round_line(round: usize, w: &serde_json::Map<String, Value>) -> String {
    let p = |name: &str, q: &str| w.get(name).and_then(|v| v["latency"][q].as_f64());
    let mut parts = Vec::new();
    for name in ["hub", "baseline", "floor"] {
        if let (Some(p50), Some(p99)) = (p(name, "p50_ms"), p(name, "p99_ms")) {
            let cpu = w[name]["hub_cpu_us_per_delivery"].as_f64().unwrap_or(0.0);
            let ratio = w[name]["delivered_ratio"].as_f64().unwrap_or(0.0);
            parts.push(format!(
                "{name} p50 {p50:.2} ms p99 {p99:.2} ms ({cpu:.1} CPU µs/delivery, delivered {ratio:.4})"
            ));
        }
    }
    for name in ["hub", "baseline"] {
        if let (Some(h50), Some(h99), Some(f50), Some(f99)) = (
            p(name, "p50_ms"),
            p(name, "p99_ms"),
            p("floor", "p50_ms"),
            p("floor", "p99_ms"),
        ) {
            parts.push(format!(
                "{name}/floor p50 {:.2}x p99 {:.2}x",
                h50 / f50.max(0.001),
                h99 / f99.max(0.001)
            ));
        }
    }
    format!("round {}: {}", round + 1, parts.join(", "))
}

/// The floor forwarder in a child process of this program; killed on drop.
pub struct FloorServer {
    pub addr: SocketAddr,
    child: Child,
}

impl FloorServer {
    pub async fn start(database_url: &str) -> Result<FloorServer, BenchError> {
        let port = env::free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("valid address");
        let child = Command::new(std::env::current_exe()?)
            .args(["floor-serve", "--listen", &addr.to_string()])
            .args(["--database-url", database_url])
            .stdin(Stdio::null())
            .spawn()?;
        let server = FloorServer { addr, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if Instant::now() > deadline {
                return Err(BenchError::Setup("floor forwarder did not start".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        crate::pin::hub_side(server.pid())?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for FloorServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Frames queued per connection before the forwarder drops one for that client.
const QUEUE: usize = 4096;

type Members = Arc<Mutex<HashMap<String, Vec<mpsc::Sender<Message>>>>>;

/// The forwarder: LISTENs on [`CHANNEL`] and writes every notification's payload, as a
/// `postgres_changes` frame, to every joined socket. Serves until killed.
pub async fn serve(listen: SocketAddr, database_url: String) -> Result<(), BenchError> {
    let (client, mut connection) = tokio_postgres::connect(&database_url, NoTls).await?;
    let (tx, mut rows) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(Ok(m)) = poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    client.batch_execute(&format!("listen {CHANNEL}")).await?;
    let members: Members = Arc::default();
    let forward_to = members.clone();
    tokio::spawn(async move {
        while let Some(row) = rows.recv().await {
            let members = forward_to.lock().expect("members lock");
            for (topic, senders) in members.iter() {
                let frame = Message::text(format!(
                    "[null,null,{},\"postgres_changes\",{{\"ids\":[0],\"data\":{row}}}]",
                    Value::from(topic.as_str())
                ));
                for s in senders {
                    let _ = s.try_send(frame.clone());
                }
            }
        }
    });
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let members = members.clone();
        tokio::spawn(async move {
            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                connection_loop(ws, members).await;
            }
        });
    }
}

/// Answers joins (as the hub does, so clients join the same way) and writes what the
/// forwarder queues, one flush per burst.
async fn connection_loop(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    members: Members,
) {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.feed(m).await.is_err() {
                return;
            }
            while let Ok(m) = rx.try_recv() {
                if sink.feed(m).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let topic = v[2].as_str().unwrap_or("").to_owned();
        match v[3].as_str() {
            Some("phx_join") => {
                let reply = json!([v[0], v[1], topic, "phx_reply", {"status": "ok", "response": {"postgres_changes": []}}]);
                let _ = tx.send(Message::text(reply.to_string())).await;
                let sys = json!([v[0], null, topic, "system", {"message": "Subscribed to PostgreSQL", "status": "ok", "extension": "postgres_changes", "channel": topic}]);
                let _ = tx.send(Message::text(sys.to_string())).await;
                members
                    .lock()
                    .expect("members lock")
                    .entry(topic)
                    .or_default()
                    .push(tx.clone());
            }
            Some("heartbeat") => {
                let reply =
                    json!([null, v[1], "phoenix", "phx_reply", {"status": "ok", "response": {}}]);
                let _ = tx.send(Message::text(reply.to_string())).await;
            }
            _ => {}
        }
    }
}
