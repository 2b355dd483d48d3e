//! The `phx_join` payload, read tolerantly: string booleans, unknown keys, absent or null
//! tokens (PROTOCOL.md §3).

use serde_json::Value;

/// A join's `config` plus its token.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JoinConfig {
    pub broadcast_self: bool,
    pub broadcast_ack: bool,
    pub presence_key: String,
    pub presence_enabled: bool,
    pub private: bool,
    /// The requested `postgres_changes` entries, verbatim (echoed in the reply).
    pub postgres_changes: Vec<Value>,
    /// `access_token` (or legacy `user_token`) when it is a string.
    pub access_token: Option<String>,
}

/// `true`, `"true"`, `"TRUE"` -> true; anything else false.
pub fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
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
            presence_key: get("presence", "key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            presence_enabled: truthy(get("presence", "enabled")),
            private: truthy(config.and_then(|c| c.get("private"))),
            postgres_changes: config
                .and_then(|c| c.get("postgres_changes"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            access_token: token,
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
        assert_eq!(c.presence_key, "u1");
        assert_eq!(c.access_token, None);
    }

    #[test]
    fn postgres_changes_entries_are_kept_verbatim() {
        let entry = json!({"event":"INSERT","schema":"public","table":"todos","filter":"id=eq.1"});
        let c = JoinConfig::parse(
            &json!({"config":{"postgres_changes":[entry.clone()]},"user_token":"t"}),
        );
        assert_eq!(c.postgres_changes, vec![entry]);
        assert_eq!(c.access_token.as_deref(), Some("t"));
    }
}
