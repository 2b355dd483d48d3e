//! What the webhook tests share: settings quick enough for a test, the row ids of
//! delivered events, and the database's clock (what a replay's `from` is compared with).

use std::time::Duration;

use serde_json::Value;

use super::e2e::PgHub;
use super::hub::test_config;

/// Webhook settings for quick tests: short batching, retries and timeouts, a short lease,
/// and a pause after three failures.
pub fn quick_settings() -> switchboard::config::ConsumerSettings {
    let mut s = test_config().consumers;
    s.batch_wait = Duration::from_millis(100);
    s.retry_initial = Duration::from_millis(50);
    s.retry_max = Duration::from_millis(200);
    s.timeout = Duration::from_secs(1);
    s.lease = Duration::from_secs(3);
    s.pause_after_failures = 3;
    s
}

/// The row id of each event (the old row's for a DELETE).
pub fn ids(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| {
            let row = if e["type"] == "DELETE" {
                &e["old_record"]
            } else {
                &e["record"]
            };
            row["id"].as_i64().unwrap()
        })
        .collect()
}

/// The database's clock now.
pub async fn db_now(pg: &PgHub) -> chrono::DateTime<chrono::Utc> {
    pg.sql
        .query_one("select clock_timestamp()", &[])
        .await
        .unwrap()
        .get(0)
}
