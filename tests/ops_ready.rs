//! `/ready` follows the change listener: 200 when connected and caught up, 503 while
//! Postgres is down, 200 again after it comes back (and `/api/status` counts the
//! reconnect and shows the error). `/health` stays 200 throughout. A channel that asked
//! `replication_ready` meanwhile is told once capture is back.

mod common;

use std::time::{Duration, Instant};

use common::hub::{test_config, TestHub};
use common::pg::{dedicated_cluster, Cluster};

/// Waits (bounded) until `GET path` answers `status`; returns the last body.
async fn wait_for_status(hub: &TestHub, path: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = hub.get(path).await;
        if code == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} stayed {code} ({body}), wanted {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A hub on a Postgres cluster of its own (so the test may stop it), once ready.
async fn hub_on_own_cluster() -> (Cluster, TestHub) {
    let cluster = dedicated_cluster().await;
    let mut config = test_config();
    config.database_url = Some(cluster.create_db().await);
    config.capture_poll = Duration::from_millis(100);
    let hub = TestHub::start(config).await;
    wait_for_status(&hub, "/ready", 200).await;
    (cluster, hub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_goes_false_while_the_listener_is_down_and_recovers() {
    let (cluster, hub) = hub_on_own_cluster().await;

    tokio::task::block_in_place(|| cluster.stop());
    let body = wait_for_status(&hub, "/ready", 503).await;
    assert!(body.contains("not ready"), "{body}");
    assert_eq!(hub.get("/health").await.0, 200);
    let (_, status) = hub.get_admin("/api/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["capture"]["connected"], false, "{status}");
    assert!(status["capture"]["last_error"].is_string(), "{status}");

    tokio::task::block_in_place(|| cluster.start());
    wait_for_status(&hub, "/ready", 200).await;
    let (_, status) = hub.get_admin("/api/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["capture"]["connected"], true, "{status}");
    assert!(
        status["capture"]["reconnects"].as_u64().unwrap() >= 1,
        "{status}"
    );
    let (_, metrics) = hub.get("/metrics").await;
    assert!(
        metrics.contains("switchboard_capture_connected 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_asking_replication_ready_while_postgres_is_down_is_told_when_it_is_back() {
    let (cluster, hub) = hub_on_own_cluster().await;
    tokio::task::block_in_place(|| cluster.stop());
    wait_for_status(&hub, "/ready", 503).await;

    let mut c = hub.connect_v2().await;
    let config = serde_json::json!({"broadcast": {"replication_ready": true}});
    let j = c.join_ok("realtime:room", config).await;
    c.expect_no_frame(Duration::from_millis(1200)).await;
    tokio::task::block_in_place(|| cluster.start());
    let system = c.recv().await;
    assert_eq!(system.join_ref(), Some(j.as_str()), "{system:?}");
    assert_eq!(
        system.payload(),
        &serde_json::json!({"extension": "system", "status": "ok",
            "message": "Replication connection established", "channel": "room"})
    );
    c.expect_no_frame(Duration::from_millis(1200)).await;
}

/// A hub started while its Postgres is down waits for it (migrating once it answers)
/// instead of exiting: one that crashed during an outage comes back with the database.
/// Meanwhile `/health` answers (a liveness probe must not restart it) and `/ready` does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_started_while_postgres_is_down_waits_for_it() {
    let cluster = dedicated_cluster().await;
    let mut config = test_config();
    config.database_url = Some(cluster.create_db().await);
    config.capture_poll = Duration::from_millis(100);
    tokio::task::block_in_place(|| cluster.stop());
    let hub = TestHub::start(config).await;
    // While it waits it is alive, not ready, and says why.
    let (code, body) = hub.get("/health").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = hub.get("/ready").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("waiting for the database"), "{body}");
    assert_eq!(hub.get("/api/status").await.0, 503);
    tokio::task::block_in_place(|| cluster.start());
    wait_for_status(&hub, "/ready", 200).await;
    let (_, status) = hub.get_admin("/api/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["capture"]["connected"], true, "{status}");
}
