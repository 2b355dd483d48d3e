//! The connection loop driven through channel pairs instead of a socket.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use futures_util::{sink, stream};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::run_connection;
use crate::auth::mint_hs256;
use crate::channel::Services;
use crate::config::Config;
use crate::protocol::Vsn;
use crate::server::Hub;

const SECRET: &str = "conn-unit-tests-secret-0123456789";

/// A connection running on a hub without a database: frames in through `input`,
/// everything the writer sends out through `output`.
struct Conn {
    hub: Arc<Hub>,
    input: mpsc::Sender<Result<Message, axum::Error>>,
    output: mpsc::UnboundedReceiver<Message>,
    task: tokio::task::JoinHandle<()>,
}

impl Conn {
    fn start(tune: impl FnOnce(&mut Config)) -> Conn {
        let mut config = Config::for_tests(SECRET);
        tune(&mut config);
        let hub = Arc::new(Hub {
            services: Services::for_tests(&config),
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            writers: crate::server::writer::Writers::per_core(),
            connection_permits: Arc::new(Semaphore::new(10)),
            capture: None,
            cluster: Arc::new(crate::cluster::ClusterStatus::single(
                crate::router::NodeId::random(),
            )),
            consumers: None,
            inspector: None,
            admin: crate::server::admin::Gate::new(None),
            rest_limits: crate::server::rest::RestLimits::new(100, 100, false),
        });
        let (input, in_rx) = mpsc::channel(16);
        let (out_tx, output) = mpsc::unbounded_channel();
        let stream = stream::unfold(
            in_rx,
            |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
        );
        let sink = sink::unfold(out_tx, |tx, m: Message| async move {
            tx.send(m).map_err(|_| axum::Error::new("closed"))?;
            Ok::<_, axum::Error>(tx)
        });
        let now = chrono::Utc::now().timestamp();
        let apikey = mint_hs256(SECRET, &json!({"role": "anon", "exp": now + 3600})).unwrap();
        let claims = hub.services.verifier.verify(&apikey).unwrap();
        let task = tokio::spawn(run_connection(
            hub.clone(),
            Box::pin(sink),
            Box::pin(stream),
            Vsn::V2,
            claims,
            None,
            "{}".into(),
        ));
        Conn {
            hub,
            input,
            output,
            task,
        }
    }

    async fn send(&self, text: &str) {
        let msg = Message::Text(Utf8Bytes::from(text.to_owned()));
        self.input.send(Ok(msg)).await.unwrap();
    }

    async fn next(&mut self) -> Message {
        tokio::time::timeout(Duration::from_secs(5), self.output.recv())
            .await
            .expect("a frame within 5 s")
            .expect("writer still running")
    }

    async fn next_json(&mut self) -> Value {
        match self.next().await {
            Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    async fn next_close(&mut self) -> (u16, String) {
        match self.next().await {
            Message::Close(Some(f)) => (f.code, f.reason.to_string()),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_heartbeat_is_answered_through_the_writer() {
    let mut c = Conn::start(|_| {});
    c.send(r#"[null,"10","phoenix","heartbeat",{}]"#).await;
    assert_eq!(
        c.next_json().await,
        json!([null, "10", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );
}

#[tokio::test]
async fn a_malformed_frame_is_answered_and_the_connection_stays_open() {
    let mut c = Conn::start(|_| {});
    c.send("{not json").await;
    assert_eq!(
        c.next_json().await,
        json!([null, null, "phoenix", "phx_reply",
            {"status": "error", "response": {"reason": "malformed message: invalid json"}}])
    );
    c.send(r#"[null,"11","phoenix","heartbeat",{}]"#).await;
    assert_eq!(c.next_json().await[1], "11");
}

#[tokio::test]
async fn silence_past_the_idle_timeout_closes_with_1000() {
    let mut c = Conn::start(|cfg| cfg.limits.idle_timeout = Duration::from_millis(200));
    assert_eq!(
        c.next_close().await,
        (1000, "idle timeout: no frame received".into())
    );
    c.task.await.unwrap();
}

#[tokio::test]
async fn shutdown_tells_each_channel_then_closes_with_1001() {
    let mut c = Conn::start(|_| {});
    c.send(r#"["1","1","realtime:room","phx_join",{}]"#).await;
    assert_eq!(c.next_json().await[4]["status"], "ok");
    c.hub.shutdown.cancel();
    assert_eq!(
        c.next_json().await,
        json!(["1", null, "realtime:room", "system",
            {"extension": "system", "status": "ok", "message": "Server requested disconnect", "channel": "room"}])
    );
    assert_eq!(c.next_close().await, (1001, "server shutting down".into()));
    c.task.await.unwrap();
    assert_eq!(c.hub.services.metrics.channels.get(), 0);
}

#[tokio::test]
async fn the_end_of_the_stream_leaves_every_channel() {
    let mut c = Conn::start(|_| {});
    c.send(r#"["1","1","realtime:room","phx_join",{}]"#).await;
    assert_eq!(c.next_json().await[4]["status"], "ok");
    assert_eq!(c.hub.services.metrics.channels.get(), 1);
    drop(c.input);
    c.task.await.unwrap();
    assert_eq!(c.hub.services.metrics.channels.get(), 0);
    assert_eq!(c.hub.services.metrics.connections.get(), 0);
}

#[test]
fn both_spellings_of_realtime_js_heartbeat_timeout_count() {
    assert!(super::heartbeat_timed_out("heartbeat timeout"));
    assert!(super::heartbeat_timed_out("hearbeat timeout"));
    assert!(!super::heartbeat_timed_out(""));
    assert!(!super::heartbeat_timed_out("bye"));
}
