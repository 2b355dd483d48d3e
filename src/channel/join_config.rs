//! The `phx_join` payload, read tolerantly: string booleans, unknown keys, absent or null
//! tokens (PROTOCOL.md §3).

use std::time::Duration;

use serde_json::Value;

use crate::authz::Replay;

/// `postgres_changes_options.timeout` when absent (the Supabase branch's default).
pub const DEFAULT_CHANGES_WAIT: Duration = Duration::from_millis(15_000);
/// The longest `postgres_changes_options.timeout` honoured.
pub const MAX_CHANGES_WAIT: Duration = Duration::from_millis(20_000);

/// A join's `config` plus its token.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinConfig {
    pub broadcast_self: bool,
    pub broadcast_ack: bool,
    pub presence_key: String,
    pub presence_enabled: bool,
    pub private: bool,
    /// The requested `postgres_changes` entries, verbatim (echoed in the reply), but for
    /// `null` entries, which Supabase drops.
    pub postgres_changes: Vec<Value>,
    /// `access_token` (or legacy `user_token`) when it is a string.
    pub access_token: Option<String>,
    /// Whether `config.broadcast.replay` is present at all (refused on public channels).
    pub replay_asked: bool,
    /// `config.broadcast.replay`, read.
    pub replay: Replay,
    /// `postgres_changes_options: {wait: true, timeout}`: how long the join may wait for
    /// capture to be live before it fails.
    pub changes_wait: Option<Duration>,
    /// `config.broadcast.replication_ready`: tell the channel once the hub reads the log.
    pub replication_ready: bool,
}

impl Default for JoinConfig {
    fn default() -> Self {
        JoinConfig {
            broadcast_self: false,
            broadcast_ack: false,
            presence_key: String::new(),
            presence_enabled: false,
            private: false,
            postgres_changes: Vec::new(),
            access_token: None,
            replay_asked: false,
            replay: Replay::None,
            changes_wait: None,
            replication_ready: false,
        }
    }
}

/// `{wait, timeout}`: `None` unless `wait` is true; the timeout (ms, positive) defaults
/// to 15 s and is capped at 20 s.
fn changes_wait(options: Option<&Value>) -> Option<Duration> {
    let options = options?;
    if !truthy(options.get("wait")) {
        return None;
    }
    let timeout = options
        .get("timeout")
        .and_then(Value::as_u64)
        .filter(|ms| *ms > 0)
        .map_or(DEFAULT_CHANGES_WAIT, Duration::from_millis);
    Some(timeout.min(MAX_CHANGES_WAIT))
}

/// `true`, `"true"`, `"TRUE"` -> true; anything else false.
pub fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// A presence key as Supabase keeps it (any JSON value): a string as it is, anything else
/// as the map key its JSON encodes to (`42` → `"42"`); `null` (like `""`) means none.
fn presence_key(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl JoinConfig {
    pub fn parse(payload: &Value) -> JoinConfig {
        let config = payload.get("config");
        let get =
            |section: &str, key: &str| config.and_then(|c| c.get(section)).and_then(|s| s.get(key));
        let token = payload
            .get("access_token")
            .or_else(|| payload.get("user_token"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        JoinConfig {
            broadcast_self: truthy(get("broadcast", "self")),
            broadcast_ack: truthy(get("broadcast", "ack")),
            presence_key: get("presence", "key").map(presence_key).unwrap_or_default(),
            presence_enabled: truthy(get("presence", "enabled")),
            private: truthy(config.and_then(|c| c.get("private"))),
            postgres_changes: config
                .and_then(|c| c.get("postgres_changes"))
                .and_then(Value::as_array)
                .map(|entries| entries.iter().filter(|e| !e.is_null()).cloned().collect())
                .unwrap_or_default(),
            access_token: token,
            replay_asked: get("broadcast", "replay").is_some_and(|v| !v.is_null()),
            replay: Replay::parse(get("broadcast", "replay")),
            changes_wait: changes_wait(config.and_then(|c| c.get("postgres_changes_options"))),
            replication_ready: truthy(get("broadcast", "replication_ready")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_sent_by_realtime_js_parse_to_all_off() {
        let c = JoinConfig::parse(
            &json!({"config":{"broadcast":{"ack":false,"self":false},"presence":{"key":"","enabled":false},"postgres_changes":[],"private":false}}),
        );
        assert_eq!(c, JoinConfig::default());
    }

    #[test]
    fn string_booleans_unknown_keys_and_null_token_are_tolerated() {
        let c = JoinConfig::parse(
            &json!({"config":{"broadcast":{"self":"TRUE","ack":"true"},"presence":{"key":"u1","enabled":true},"version":"realtime-js/2.1"},"access_token":null}),
        );
        assert!(c.broadcast_self && c.broadcast_ack && c.presence_enabled);
        assert!(!c.replication_ready);
        let ready =
            JoinConfig::parse(&json!({"config":{"broadcast":{"replication_ready":"true"}}}));
        assert!(ready.replication_ready);
        assert_eq!(c.presence_key, "u1");
        let key = |k: Value| JoinConfig::parse(&json!({"config": {"presence": {"key": k}}}));
        assert_eq!(
            key(json!(42)).presence_key,
            "42",
            "a number keys as its text"
        );
        assert_eq!(key(json!(true)).presence_key, "true");
        assert_eq!(
            key(Value::Null).presence_key,
            "",
            "null: none (a uuid then)"
        );
        assert_eq!(c.access_token, None);
    }

    #[test]
    fn postgres_changes_options_wait_up_to_twenty_seconds() {
        let wait = |v: Value| {
            JoinConfig::parse(&json!({"config": {"postgres_changes_options": v}})).changes_wait
        };
        assert_eq!(wait(json!({"wait": true})), Some(DEFAULT_CHANGES_WAIT));
        assert_eq!(
            wait(json!({"wait": "true", "timeout": 500})),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            wait(json!({"wait": true, "timeout": 60_000})),
            Some(MAX_CHANGES_WAIT)
        );
        assert_eq!(wait(json!({"wait": false, "timeout": 500})), None);
        assert_eq!(JoinConfig::parse(&json!({"config": {}})).changes_wait, None);
    }

    #[test]
    fn a_replay_key_is_noticed_even_when_its_value_is_unusable() {
        let c = JoinConfig::parse(&json!({"config": {"broadcast": {"replay": "soon"}}}));
        assert!(c.replay_asked);
        assert_eq!(c.replay, Replay::None);
        let c = JoinConfig::parse(&json!({"config": {"broadcast": {"replay": {"since": 5}}}}));
        assert!(matches!(c.replay, Replay::Requested(_)));
    }

    #[test]
    fn postgres_changes_entries_are_kept_verbatim() {
        let entry = json!({"event":"INSERT","schema":"public","table":"todos","filter":"id=eq.1"});
        let c = JoinConfig::parse(
            &json!({"config":{"postgres_changes":[entry.clone()]},"user_token":"t"}),
        );
        assert_eq!(c.postgres_changes, vec![entry.clone()]);
        assert_eq!(c.access_token.as_deref(), Some("t"));
        let dropped =
            JoinConfig::parse(&json!({"config":{"postgres_changes":[null, entry.clone(), null]}}));
        assert_eq!(
            dropped.postgres_changes,
            vec![entry],
            "null entries are dropped"
        );
    }
}
