//! One webhook request: the JSON body (an array of events with stable ids), Standard
//! Webhooks signing (`webhook-id`, `webhook-timestamp`, `webhook-signature`, by the
//! `standardwebhooks` crate), the POST under a timeout, and what its answer means. Also
//! the retry delay: exponential backoff with jitter. Knows nothing of the log or leases.

use std::time::Duration;

use serde::Serialize;
use standardwebhooks::Webhook;

use crate::changes::{format_commit_time, Change, Row};

/// Most bytes of an error answer's body kept for `last_error`.
const ERROR_BODY_BYTES: usize = 200;
/// Bytes of the body's SHA-256 in a `webhook-id` (as hex).
const MESSAGE_DIGEST_BYTES: usize = 8;

/// A change's id in webhook bodies and the feed: its log row and place in that row,
/// the same on every retry, replay and hub.
pub fn event_id(c: &Change) -> String {
    format!("{}-{}", c.id, c.seq)
}

/// One event of a webhook body.
#[derive(Serialize)]
struct Event<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    schema: &'a str,
    table: &'a str,
    record: Option<&'a Row>,
    old_record: Option<&'a Row>,
    commit_timestamp: String,
}

impl<'a> Event<'a> {
    fn of(c: &'a Change) -> Event<'a> {
        Event {
            id: event_id(c),
            kind: c.op.as_str(),
            schema: &c.schema,
            table: &c.table,
            record: c.record.as_ref(),
            old_record: c.old_record.as_ref(),
            commit_timestamp: format_commit_time(c.commit_time),
        }
    }
}

/// A request body filled event by event up to a size: a JSON array of events in log
/// order.
#[derive(Debug, Default)]
pub struct Body {
    json: Vec<u8>,
    events: usize,
}

impl Body {
    /// Adds `c` unless the body would then be larger than `max_bytes` and already holds
    /// an event: a change larger than `max_bytes` goes alone, never stuck. True when
    /// added.
    pub fn push(&mut self, c: &Change, max_bytes: usize) -> bool {
        let start = self.json.len();
        self.json.push(if self.events == 0 { b'[' } else { b',' });
        // (Cannot fail: it writes into memory, and every map key is a string.)
        let _ = serde_json::to_writer(&mut self.json, &Event::of(c));
        // (+1: the closing bracket.)
        if self.events > 0 && self.json.len() + 1 > max_bytes {
            self.json.truncate(start);
            return false;
        }
        self.events += 1;
        true
    }

    /// The events added.
    pub fn events(&self) -> usize {
        self.events
    }

    /// The finished body.
    pub fn finish(mut self) -> bytes::Bytes {
        if self.events == 0 {
            self.json.push(b'[');
        }
        self.json.push(b']');
        self.json.into()
    }
}

/// The `webhook-id` of a batch with request body `body`: named by its first and last
/// event and a digest of the body, so a retry of the same batch carries the same id and
/// a batch with other events (or other contents, after `alter_webhook`) another one: a
/// receiver that dedupes by `webhook-id`, as Standard Webhooks tells it to, never drops
/// a body it has not seen.
pub fn message_id(ends: Option<(&Change, &Change)>, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(body);
    let short: String = digest[..MESSAGE_DIGEST_BYTES]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    match ends {
        Some((first, last)) => format!("msg_{}_{}_{short}", event_id(first), event_id(last)),
        None => format!("msg_empty_{short}"),
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx.
    Delivered,
    Failed {
        /// The HTTP status, when there was an answer.
        status: Option<u16>,
        error: String,
        /// The receiver's `Retry-After`, in seconds.
        retry_after: Option<Duration>,
    },
}

/// Sends signed requests; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    http: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("invalid webhook secret: {0}")]
    Secret(String),
}

impl Sender {
    /// Requests time out after `timeout`; redirects are not followed (a 3xx is a failure).
    pub fn new(timeout: Duration) -> Sender {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Switchboard-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Sender { http }
    }

    /// POSTs `body` to `url` as message `msg_id`, signed with each of `secrets` (the
    /// current one first).
    pub async fn post(
        &self,
        url: &str,
        secrets: &[&str],
        msg_id: &str,
        body: bytes::Bytes,
    ) -> Outcome {
        let timestamp = chrono::Utc::now().timestamp();
        let signature = match sign_all(secrets, msg_id, timestamp, &body) {
            Ok(s) => s,
            Err(e) => {
                return Outcome::Failed {
                    status: None,
                    error: e.to_string(),
                    retry_after: None,
                }
            }
        };
        let sent = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Failed {
                    status: None,
                    error: describe(&e),
                    retry_after: None,
                }
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Outcome::Delivered;
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.text().await.unwrap_or_default();
        let snippet: String = text.chars().take(ERROR_BODY_BYTES).collect();
        Outcome::Failed {
            status: Some(status.as_u16()),
            error: format!("HTTP {}: {}", status.as_u16(), snippet.trim()),
            retry_after,
        }
    }
}

/// The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> Result<String, SignError> {
    let hook = Webhook::new(secret).map_err(|e| SignError::Secret(e.to_string()))?;
    hook.sign(msg_id, timestamp, body)
        .map_err(|e| SignError::Secret(e.to_string()))
}

/// The `webhook-signature` value for several secrets (a rotation's new one and the one
/// it replaced): their signatures space-separated, in order, as Standard Webhooks sends
/// them so a receiver holding either secret verifies.
pub fn sign_all(
    secrets: &[&str],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, SignError> {
    let signatures = secrets
        .iter()
        .map(|s| sign(s, msg_id, timestamp, body))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(signatures.join(" "))
}

/// A short, secret-free description of a transport error.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        format!("could not connect: {}", root_cause(e))
    } else {
        format!("request failed: {}", root_cause(e))
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// How long to wait before attempt `failures + 1` after `failures` failures in a row:
/// `initial` doubling per failure up to `max`, the upper half jittered (`jitter` in
/// [0, 1)), and never less than a receiver's `Retry-After` (still capped by `max`).
pub fn backoff(
    failures: u32,
    initial: Duration,
    max: Duration,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let full = initial.saturating_mul(1u32 << exp).min(max);
    let jittered = full / 2 + full.mul_f64(jitter.clamp(0.0, 1.0) / 2.0);
    jittered.max(retry_after.unwrap_or_default()).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::Op;
    use chrono::TimeZone;

    fn change(id: i64, seq: u32, op: Op) -> Change {
        Change {
            id,
            xid: 1,
            seq,
            schema: "public".into(),
            table: "contacts".into(),
            op,
            record: serde_json::json!({"id": 1, "name": "Ada"})
                .as_object()
                .cloned(),
            old_record: None,
            commit_time: Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap(),
        }
    }

    use chrono::Utc;

    /// The request body of `changes`, whatever its size.
    fn body(changes: &[Change]) -> bytes::Bytes {
        let mut body = Body::default();
        for c in changes {
            body.push(c, usize::MAX);
        }
        body.finish()
    }

    #[test]
    fn a_body_is_an_array_of_events_with_stable_ids() {
        let body = body(&[change(41, 0, Op::Insert), change(41, 1, Op::Insert)]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v[0],
            serde_json::json!({"id": "41-0", "type": "INSERT", "schema": "public",
                "table": "contacts", "record": {"id": 1, "name": "Ada"}, "old_record": null,
                "commit_timestamp": "2024-05-01T12:00:00.000Z"})
        );
        assert_eq!(v[1]["id"], "41-1");
    }

    #[test]
    fn a_message_id_is_the_same_for_the_same_body_and_differs_for_another() {
        let batch = [change(41, 1, Op::Insert), change(43, 0, Op::Delete)];
        let id = message_id(batch.first().zip(batch.last()), &body(&batch));
        assert!(id.starts_with("msg_41-1_43-0_"), "{id}");
        assert_eq!(id.len(), "msg_41-1_43-0_".len() + 2 * MESSAGE_DIGEST_BYTES);
        assert_eq!(
            id,
            message_id(batch.first().zip(batch.last()), &body(&batch)),
            "a retry"
        );
        // The same first and last event with another one between (a filter changed).
        let other = [
            change(41, 1, Op::Insert),
            change(42, 0, Op::Insert),
            change(43, 0, Op::Delete),
        ];
        let other_id = message_id(other.first().zip(other.last()), &body(&other));
        assert!(other_id.starts_with("msg_41-1_43-0_"), "{other_id}");
        assert_ne!(id, other_id);
    }

    #[test]
    fn a_body_stops_before_passing_its_size_but_always_takes_one_change() {
        let one = body(&[change(1, 0, Op::Insert)]).len();
        let mut b = Body::default();
        // Room for two events and a bit, not three.
        let max = 2 * one + 10;
        assert!(b.push(&change(1, 0, Op::Insert), max));
        assert!(b.push(&change(1, 1, Op::Insert), max));
        assert!(!b.push(&change(1, 2, Op::Insert), max));
        assert_eq!(b.events(), 2);
        let v: serde_json::Value = serde_json::from_slice(&b.finish()).unwrap();
        assert_eq!(
            (v[0]["id"].as_str(), v[1]["id"].as_str()),
            (Some("1-0"), Some("1-1"))
        );
        // A change larger than the size still goes, alone.
        let mut b = Body::default();
        assert!(b.push(&change(2, 0, Op::Insert), 5));
        assert!(!b.push(&change(2, 1, Op::Insert), 5));
        let v: serde_json::Value = serde_json::from_slice(&b.finish()).unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(1));
        assert_eq!(&Body::default().finish()[..], b"[]");
    }

    #[test]
    fn signatures_follow_the_standard_webhooks_test_vector() {
        // The vector from the Standard Webhooks specification's reference libraries.
        let sig = sign(
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
        assert!(sign("whsec_not base64!", "m", 1, b"{}").is_err());
        let (new, old) = (
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        let both = sign_all(&[new, old], "m", 1, b"{}").unwrap();
        assert_eq!(
            both,
            format!(
                "{} {}",
                sign(new, "m", 1, b"{}").unwrap(),
                sign(old, "m", 1, b"{}").unwrap()
            )
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_honours_retry_after() {
        let (initial, max) = (Duration::from_millis(1000), Duration::from_secs(300));
        assert_eq!(
            backoff(1, initial, max, None, 0.0),
            Duration::from_millis(500)
        );
        assert_eq!(backoff(1, initial, max, None, 0.999_999).as_millis(), 999);
        for n in 1..40 {
            let full = (initial * 2u32.pow((n - 1).min(20))).min(max);
            for jitter in [0.0, 0.3, 0.99] {
                let d = backoff(n, initial, max, None, jitter);
                assert!(d >= full / 2 && d <= full, "failure {n}: {d:?} vs {full:?}");
            }
        }
        assert_eq!(
            backoff(50, initial, max, None, 0.0),
            Duration::from_secs(150)
        );
        let ra = Some(Duration::from_secs(20));
        assert_eq!(backoff(1, initial, max, ra, 0.5), Duration::from_secs(20));
        let huge = Some(Duration::from_secs(9999));
        assert_eq!(backoff(1, initial, max, huge, 0.5), max);
    }
}
