//! The exact texts clients surface: join error reasons, reply errors, `system` messages and
//! HTTP error bodies (PROTOCOL.md §1, §3, §4, §5, §7, §9). Clients match on some of these
//! (Python retries slower on `*RateLimitReached`), so they must not be reworded.

use serde_json::{json, Value};

// --- Phoenix-level reply reasons (§3) ---

/// Reply to a message for a topic not starting with `realtime:` or not joined here.
pub const UNMATCHED_TOPIC: &str = "unmatched topic";

// --- Join error codes and reasons (§3), all of the form "<Code>: <message>" ---

pub const CODE_INVALID_JWT: &str = "InvalidJWTToken";
pub const CODE_MALFORMED_JWT: &str = "MalformedJWT";
pub const CODE_JWT_SIGNATURE: &str = "JwtSignatureError";
pub const CODE_UNAUTHORIZED: &str = "Unauthorized";
pub const CODE_UNABLE_TO_REPLAY: &str = "UnableToReplayMessages";

/// `"<Code>: <message>"`, the shape of every join error reason.
pub fn join_error(code: &str, message: &str) -> String {
    format!("{code}: {message}")
}

/// Topic is exactly `realtime:`.
pub const TOPIC_REQUIRED: &str = "TopicNameRequired: You must provide a topic name";
pub const TOO_MANY_CHANNELS: &str = "ChannelRateLimitReached: Too many channels";
/// Also disconnects the socket.
pub const TOO_MANY_JOINS: &str = "ClientJoinRateLimitReached: Too many joins per second";
pub const TOO_MANY_CONNECTED_USERS: &str = "ConnectionRateLimitReached: Too many connected users";
pub const PRIVATE_ONLY: &str = "PrivateOnly: This project only allows private channels";
pub const REALTIME_RESTARTING: &str = "RealtimeRestarting: Realtime is restarting, please standby";
pub const REPLAY_NOT_ALLOWED_FOR_PUBLIC: &str =
    "UnableToReplayMessages: Replay is not allowed for public channels";
/// The one reason without a code.
pub const UNKNOWN_ERROR: &str = "Unknown Error on Channel";

/// Join of a private channel without read permission; `name` is the topic without `realtime:`.
pub fn unauthorized_read(name: &str) -> String {
    format!("Unauthorized: You do not have permissions to read from this Channel topic: {name}")
}

// --- Token errors (§1 HTTP bodies, §3 join reasons with `InvalidJWTToken` etc., §7 system) ---

pub const API_KEY_MISSING: &str = "API key is missing";
pub const JWT_CLAIMS_REQUIRED: &str = "Fields `role` and `exp` are required in JWT";
pub const JWT_MALFORMED: &str = "The token provided is not a valid JWT";
pub const JWT_BAD_SIGNATURE: &str = "Failed to validate JWT signature";
pub const JWT_EXP_INVALID: &str = "Token expiration time is invalid";
/// HTTP 401 body text at connect time.
pub const TOKEN_EXPIRED: &str = "Token has expired";

/// `Token has expired N seconds ago` (join reason after `InvalidJWTToken: `, or system message).
pub fn token_expired_ago(seconds: u64) -> String {
    format!("Token has expired {seconds} seconds ago")
}

/// System error when a refreshed token loses read access to a private channel.
pub fn no_longer_permitted(name: &str) -> String {
    format!("You no longer have permission to read from this Channel topic: {name}")
}

// --- Broadcast and presence replies (§5, §6) ---

/// `{"error": ...}` of a broadcast ack over the size limit.
pub const PAYLOAD_TOO_LARGE: &str = "payload_size_exceeded";
pub const PRESENCE_NOT_MAP: &str = "Presence track payload must be a map";

// --- `system` messages (§3, §4, §7, §9) ---

pub const EXTENSION_SYSTEM: &str = "system";
pub const EXTENSION_POSTGRES_CHANGES: &str = "postgres_changes";
pub const STATUS_OK: &str = "ok";
pub const STATUS_ERROR: &str = "error";

pub const SUBSCRIBED_TO_POSTGRES: &str = "Subscribed to PostgreSQL";
pub const TOO_MANY_MESSAGES: &str = "Too many messages per second";
pub const TOO_MANY_PRESENCE_MESSAGES: &str = "Too many presence messages per second";
pub const CLIENT_PRESENCE_RATE_LIMIT: &str = "Client presence rate limit exceeded";
pub const TRACK_TOO_LARGE: &str = "Track message size exceeded";
pub const REPLICATION_ESTABLISHED: &str = "Replication connection established";
pub const REPLICATION_TIMEOUT: &str = "Replication connection was not established in time";
pub const SERVER_REQUESTED_DISCONNECT: &str = "Server requested disconnect";
pub const TOO_MANY_IN_VALUES: &str = "too many values for `in` filter. Maximum 100";

/// Bad `filter` string of a `postgres_changes` entry (the channel stays open).
pub fn filter_parse_error(detail: &str) -> String {
    format!("Error parsing `filter` params: {detail}")
}

pub fn invalid_filter_column(column: &str) -> String {
    format!("invalid column for filter {column}")
}

/// Subscription that cannot be made (e.g. the table is not captured); `params` describes it.
pub fn unable_to_subscribe(params: &str) -> String {
    format!(
        "Unable to subscribe to changes with given parameters. Please check Realtime is \
         enabled for the given connect parameters: [{params}]"
    )
}

/// `system` payload: all four keys, as Python's model requires.
pub fn system_payload(extension: &str, status: &str, message: &str, channel: &str) -> Value {
    json!({
        "extension": extension,
        "status": status,
        "message": message,
        "channel": channel,
    })
}

/// `response` of an error `phx_reply`: `{"reason": ...}`.
pub fn error_response(reason: &str) -> Value {
    json!({ "reason": reason })
}

// --- postgres_changes `data.errors` entries (§4) ---

pub const CHANGE_NO_PRIMARY_KEY: &str = "Error 400: Bad Request, no primary key";
pub const CHANGE_UNAUTHORIZED: &str = "Error 401: Unauthorized";
pub const CHANGE_TOO_LARGE: &str = "Error 413: Payload Too Large";

// --- HTTP error texts (§1, §5, §9) ---

pub const HTTP_TOO_MANY_CONNECTED_USERS: &str = "Too many connected users";
pub const HTTP_TOO_MANY_JOINS: &str = "Too many joins per second";
pub const HTTP_UNAUTHORIZED: &str = "Unauthorized";
pub const HTTP_RATE_LIMITED: &str = "You have exceeded your rate limit";
pub const HTTP_BATCH_TOO_LARGE: &str =
    "Too many messages to broadcast, please reduce the batch size";
pub const HTTP_PAYLOAD_TOO_LARGE: &str = "Payload size exceeds tenant limit";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_error_joins_code_and_message_with_a_colon() {
        assert_eq!(
            join_error(CODE_INVALID_JWT, &token_expired_ago(3)),
            "InvalidJWTToken: Token has expired 3 seconds ago"
        );
        assert_eq!(
            join_error(CODE_MALFORMED_JWT, JWT_MALFORMED),
            "MalformedJWT: The token provided is not a valid JWT"
        );
    }

    #[test]
    fn rate_limit_reasons_start_with_the_codes_python_backs_off_on() {
        assert!(TOO_MANY_CHANNELS.starts_with("ChannelRateLimitReached: "));
        assert!(TOO_MANY_JOINS.starts_with("ClientJoinRateLimitReached: "));
        assert!(TOO_MANY_CONNECTED_USERS.starts_with("ConnectionRateLimitReached: "));
    }

    #[test]
    fn unauthorized_read_names_the_topic_without_prefix() {
        assert_eq!(
            unauthorized_read("room:42"),
            "Unauthorized: You do not have permissions to read from this Channel topic: room:42"
        );
    }

    #[test]
    fn system_payload_has_all_four_keys() {
        let p = system_payload(
            EXTENSION_POSTGRES_CHANGES,
            STATUS_OK,
            SUBSCRIBED_TO_POSTGRES,
            "room1",
        );
        assert_eq!(
            p,
            json!({"message":"Subscribed to PostgreSQL","status":"ok",
                   "extension":"postgres_changes","channel":"room1"})
        );
    }

    #[test]
    fn error_response_carries_the_reason() {
        assert_eq!(
            error_response(UNMATCHED_TOPIC),
            json!({"reason":"unmatched topic"})
        );
    }
}
