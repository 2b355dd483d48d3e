//! Every text a client can see, as enums whose variants know their wire text (and status
//! or close code where there is one): reply reasons, `system` messages, postgres_changes
//! errors, HTTP bodies and WebSocket close reasons (PROTOCOL.md §1, §3–§9). Clients match
//! on some of these (Python retries slower on `*RateLimitReached`), so they must not be
//! reworded. No other module writes a client-visible string literal.

use serde_json::{json, Value};

/// A token that cannot be used: at connect (HTTP 401), at join (reply reason with a
/// code) and on a joined channel (`system` error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("API key is missing")]
    Missing,
    #[error("The token provided is not a valid JWT")]
    Malformed,
    #[error("Failed to validate JWT signature")]
    Signature,
    /// An asymmetric token whose `kid` names no key of the hub's (a JWKS that lacks a
    /// newly rotated key, say), in Supabase's words.
    #[error("Failed to generate JWT signer for key ID (kid) {kid:?}, check your JWT secret or JWKS configuration")]
    Signer { kid: String },
    #[error("Fields `role` and `exp` are required in JWT")]
    MissingClaims,
    #[error("Token expiration time is invalid")]
    InvalidExp,
    #[error("Token has expired {seconds_ago} seconds ago")]
    Expired { seconds_ago: i64 },
    #[error("Token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("Token not-before time is invalid")]
    InvalidNbf,
    /// The token names a Postgres role outside `allowed_roles`.
    #[error("Token role {role:?} is not allowed")]
    RoleNotAllowed { role: String },
    /// The token's role is allowed, but the hub's database user may not act as it (not a
    /// member, or no such role), so Postgres would refuse it.
    #[error("Token role {role:?} is not available: the hub's database user is not a member of it (checked at start: restart the hub after granting it)")]
    RoleUnavailable { role: String },
}

impl TokenError {
    /// The code part of a join error reason.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed => "MalformedJWT",
            TokenError::Signature => "JwtSignatureError",
            TokenError::Signer { .. } => "JwtSignerError",
            TokenError::Missing
            | TokenError::MissingClaims
            | TokenError::InvalidExp
            | TokenError::Expired { .. }
            | TokenError::NotYetValid
            | TokenError::InvalidNbf
            | TokenError::RoleNotAllowed { .. }
            | TokenError::RoleUnavailable { .. } => "InvalidJWTToken",
        }
    }

    /// The text of an HTTP 401 at connect: an expired token is just "Token has expired".
    fn http_text(&self) -> String {
        match self {
            TokenError::Expired { .. } => "Token has expired".to_owned(),
            other => other.to_string(),
        }
    }
}

/// The `reason` of an error `phx_reply`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A topic not starting with `realtime:`, or a message for a topic not joined here.
    #[error("unmatched topic")]
    UnmatchedTopic,
    /// The topic is exactly `realtime:`.
    #[error("TopicNameRequired: You must provide a topic name")]
    TopicRequired,
    /// A private topic Postgres cannot hold (see [`refuse_nul`]).
    #[error("TopicNameInvalid: {0}")]
    BadTopic(String),
    #[error("ChannelRateLimitReached: Too many channels")]
    TooManyChannels,
    /// More `postgres_changes` entries in one join than allowed. Supabase has no such
    /// limit; the code is its per-connection limit's, so Python waits 30 s to rejoin.
    #[error(
        "ChannelRateLimitReached: Too many postgres_changes entries in one join (at most {max})"
    )]
    TooManyChangesInJoin { max: usize },
    /// The join would take the connection's `postgres_changes` entries past the limit.
    #[error("ChannelRateLimitReached: Too many postgres_changes entries on this connection (at most {max})")]
    TooManyChangesOnConnection { max: usize },
    /// Also closes the socket.
    #[error("ClientJoinRateLimitReached: Too many joins per second")]
    TooManyJoins,
    #[error("{code}: {0}", code = .0.code())]
    Token(TokenError),
    /// The push that went past `max_messages_per_second` (its channel is shut next).
    #[error("Too many messages per second")]
    TooManyMessages,
    /// A topic longer than `MAX_TOPIC_BYTES`.
    #[error("TopicNameInvalid: topic is longer than {max} bytes")]
    TopicTooLong { max: usize },
    #[error("unknown event {0:?}")]
    UnknownEvent(String),
    #[error("unknown presence event {0:?}")]
    UnknownPresenceEvent(String),
    #[error("Presence track payload must be a map")]
    PresenceNotMap,
    /// A text broadcast push whose payload is not an object naming its event.
    #[error("Broadcast payload must be a map with a string event")]
    BroadcastMalformed,
    /// A track of a new presence in a topic that already holds the most allowed.
    #[error("PresenceLimitReached: This channel already has {max} presences, the most allowed")]
    TooManyPresences { max: usize },
    /// A track that would take the topic's presence state past its byte bound.
    #[error(
        "PresenceLimitReached: This track would take the channel's presence state over {max} bytes"
    )]
    PresenceStateTooLarge { max: usize },
    #[error("malformed message: {0}")]
    Malformed(super::DecodeError),
    /// A private channel the token may not read; `channel` is the topic without `realtime:`.
    #[error(
        "Unauthorized: You do not have permissions to read from this Channel topic: {channel}"
    )]
    ReadDenied { channel: String },
    /// A `realtime.messages` policy (or the token's role) raised while deciding read
    /// access: the join is refused and the problem named.
    #[error("Unauthorized: You do not have permissions to read from this Channel topic: {channel} (the realtime.messages policy check failed: {problem})")]
    ReadCheckFailed { channel: String, problem: String },
    /// The database could not be reached to decide a private channel.
    #[error("UnableToConnectToProject: Realtime was unable to connect to the project database")]
    DatabaseUnavailable,
    #[error("UnableToReplayMessages: Replay is not allowed for public channels")]
    ReplayOnPublicChannel,
    /// `private_only` is set and the join is of a public channel.
    #[error("PrivateOnly: This project only allows private channels")]
    PrivateOnly,
    #[error("UnableToReplayMessages: Replay params are not valid")]
    ReplayParamsInvalid,
    #[error("UnableToReplayMessages: Realtime was unable to replay messages")]
    ReplayFailed,
    /// `postgres_changes_options.wait`: capture did not come up in time.
    #[error("PostgresChangesSubscribeTimeout: Timed out after {ms}ms waiting for the postgres_changes subscription")]
    ChangesWaitTimeout { ms: u64 },
    /// `postgres_changes_options.wait`: an entry cannot be subscribed.
    #[error("RealtimeDisabledForConfiguration: {0}")]
    ChangesRefused(ChangesError),
}

impl ReplyError {
    /// `{"reason": ...}`, the `response` of the error reply.
    pub fn response(&self) -> Value {
        json!({ "reason": self.to_string() })
    }
}

/// The `response` of an error reply to a broadcast sent with `ack: true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckError {
    PayloadTooLarge,
}

impl AckError {
    pub fn response(self) -> Value {
        match self {
            AckError::PayloadTooLarge => json!({ "error": "payload_size_exceeded" }),
        }
    }
}

/// Why a channel is ended with a `system` error (always followed by `phx_close`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("Too many messages per second")]
    TooManyMessages,
    #[error("Track message size exceeded")]
    TrackTooLarge,
    /// More presence messages in one window than `presence_calls_per_window`.
    #[error("Client presence rate limit exceeded")]
    PresenceCallsExceeded,
    #[error("{0}")]
    Token(TokenError),
    /// A refreshed token lost one of the read permissions the channel had.
    #[error("You no longer have permission to read from this Channel topic: {channel}")]
    ReadLost { channel: String },
    /// A refreshed token may read neither broadcast nor presence.
    #[error("You do not have permissions to read from this Channel topic: {channel}")]
    ReadDenied { channel: String },
    /// A policy raised while re-deciding read access for a refreshed token.
    #[error("You do not have permissions to read from this Channel topic: {channel} (the realtime.messages policy check failed: {problem})")]
    ReadCheckFailed { channel: String, problem: String },
    #[error("Realtime was unable to connect to the project database")]
    DatabaseUnavailable,
    /// `replication_ready` was asked and the hub was not reading the log in time.
    #[error("Replication connection was not established in time")]
    ReplicationTimeout,
}

/// Why one `postgres_changes` entry of a join cannot be served. Sent as a
/// `postgres_changes` `system` error; the channel stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangesError {
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("postgres_changes is unavailable: the hub runs without a database (set DATABASE_URL)")]
    NoDatabase,
    #[error("Unable to subscribe to changes with given parameters: each postgres_changes entry must be an object")]
    EntryNotObject,
    /// Supabase's text for an entry naming neither a schema nor a table, or giving a
    /// `schema`, `table` or `filter` that is not a string; `entry` is the entry as sent.
    #[error("No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: {entry}")]
    NoParams { entry: String },
    #[error("Unable to subscribe to changes with given parameters: a filter needs a single table, not `{scope}`")]
    FilterNeedsTable { scope: String },
    /// The table does not exist, or the role may select none of its columns: one answer
    /// for both, so a token cannot learn which tables exist.
    #[error("Unable to subscribe to changes with given parameters: table {table} does not exist or role {role} may not select from it")]
    NoVisibleTable { table: String, role: String },
    /// A view, materialized view or foreign table the role may select from: no change of
    /// it is ever captured (Supabase's publication cannot hold one either).
    #[error("Unable to subscribe to changes with given parameters: {table} is a {kind}, and realtime captures tables only; subscribe to the tables it reads from")]
    NotATable { table: String, kind: String },
    /// A schema-wide entry on a schema that does not exist or the role may not use (one
    /// answer for both, as for tables).
    #[error("Unable to subscribe to changes with given parameters: schema {schema} does not exist or role {role} may not use it")]
    NoUsableSchema { schema: String, role: String },
    /// Only told to a role that may select from the table (so it leaks nothing). It starts
    /// as Supabase's does for a table outside the publication.
    #[error("Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: table {table} is not enabled for realtime; add it to the publication with: {} or enable it with: {}", publication_sql(.table), enable_sql(.table))]
    NotEnabled { table: String },
    /// [`ChangesError::NotEnabled`] for a table the publication lists whose capture
    /// triggers could not be made yet: the sync in the ALTER's transaction gave up on a
    /// lock (or had no right to make them), warned, and the hub's sync tries again.
    #[error("Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: table {table} is in publication supabase_realtime, but its capture has not started yet: its triggers could not be made (most often a transaction that wrote to the table is still open; the hub's log says so); the hub tries again every 5 seconds, so join again once that transaction has ended")]
    CaptureNotStarted { table: String },
    /// [`ChangesError::NotEnabled`] for a partitioned table: adding it to the publication
    /// alone captures its partitions, under their own names.
    #[error("Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: table {table} is partitioned and not captured as itself (publication supabase_realtime publishes its partitions, under their own names, unless publish_via_partition_root is set); subscribe to its partitions, or set: alter publication supabase_realtime set (publish_via_partition_root = true); or enable it with: {}", enable_sql(.table))]
    NotEnabledPartitioned { table: String },
    /// A table in schema `realtime` (the hub's own) or a system schema: there is
    /// nothing to enable.
    #[error("Unable to subscribe to changes with given parameters: table {table} cannot be captured: tables in schema {schema} are never captured")]
    NotCapturable { table: String, schema: String },
    #[error("Error parsing `select` params: expected a list of column name strings, e.g. select: [\"col1\", \"col2\"]")]
    SelectNotList,
    #[error("Column selection is not supported for wildcard subscriptions. Provide an explicit schema and table name.")]
    SelectWithWildcard,
    #[error("invalid column for select {column}")]
    SelectUnknownColumn { column: String },
    #[error("invalid column for select {column}: role {role} may not select it")]
    SelectNotPermitted { column: String, role: String },
    /// A filter on a column the role may not select (its values would leak through
    /// which rows match).
    #[error("invalid column for filter {column}: role {role} may not select it")]
    FilterNotPermitted { column: String, role: String },
    /// A schema or table name Postgres cannot hold (see [`refuse_nul`]).
    #[error("Unable to subscribe to changes with given parameters: {0}")]
    BadName(String),
    /// The catalog could not be read (database unreachable); the detail is logged.
    #[error("Unable to subscribe to changes with given parameters: Realtime was unable to connect to the project database")]
    Unavailable,
}

/// The SQL that enables realtime on `table` (already quoted: `public."My Table"`).
pub fn enable_sql(table: &str) -> String {
    format!("select realtime.enable('{}')", table.replace('\'', "''"))
}

/// The statement that adds `table` to the `supabase_realtime` publication.
pub fn publication_sql(table: &str) -> String {
    format!("alter publication supabase_realtime add table {table};")
}

/// [`enable_sql`] as a statement to paste into psql.
pub fn enable_statement(table: &str) -> String {
    format!("{};", enable_sql(table))
}

/// Refuses a name the hub would hand to Postgres (`what`: "table", "topic", ...) when it
/// contains a NUL character, which Postgres text cannot hold: the client's mistake, said
/// as such, never sent (Postgres would answer with an error that looks like an outage).
pub fn refuse_nul(what: &str, name: &str) -> Result<(), String> {
    match name.contains('\0') {
        true => Err(format!("{what} {name:?} contains a NUL character")),
        false => Ok(()),
    }
}

/// A `filter` string that cannot be parsed or bound to its table's columns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("Error parsing `filter` params: {0}")]
    Syntax(String),
    #[error("Error parsing `filter` params: unknown operator {0}")]
    UnknownOperator(String),
    #[error("too many values for `in` filter. Maximum 100")]
    TooManyInValues,
    #[error("Error parsing `filter` params: {op} pattern longer than {max} characters")]
    PatternTooLong { op: &'static str, max: usize },
    #[error("Error parsing `filter` params: invalid regular expression for {op} filter: {reason}")]
    InvalidPattern { op: &'static str, reason: String },
    #[error(
        "Error parsing `filter` params: like pattern must not end with the escape character `\\`"
    )]
    PatternEndsWithEscape,
    #[error("invalid column for filter {0}")]
    InvalidColumn(String),
    /// A value Postgres refused for its column's type, in Supabase's words: `params` as
    /// Supabase logs a subscription's, `message` as its Postgres client words the error.
    #[error("Unable to subscribe to changes with given parameters. An exception happened so please check your connect parameters: [{params}]. Exception: {message}")]
    Refused { params: String, message: String },
    #[error("Error parsing `filter` params: invalid input for type {type_name}: \"{value}\"")]
    InvalidValue { type_name: String, value: String },
    #[error("Error parsing `filter` params: operator {op} is not supported for column {column} of type {type_name}")]
    UnsupportedOperator {
        op: &'static str,
        column: String,
        type_name: String,
    },
}

/// How a resuming join went (channels of connections with `resume=<key>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// The gap was replayed: `count` changes and database broadcasts.
    Recovered {
        count: usize,
    },
    NotRecovered(NotRecovered),
}

/// Why a resuming join could not cover the gap: the app should refetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRecovered {
    /// No earlier subscription under this key, topic and bindings (a first join, or its
    /// record is gone).
    Unknown,
    /// Parked longer than the grace.
    Expired,
    /// The change log was pruned past where it stopped.
    Pruned,
    /// More changes were missed than the hub replays.
    TooMany { max: usize },
    /// The missed changes could not be read (database trouble).
    Failed,
    /// A postgres_changes entry of the join was refused (its table renamed or dropped
    /// meanwhile, say): its missed changes were not replayed.
    Refused,
}

impl Resumed {
    fn message(self) -> String {
        match self {
            Resumed::Recovered { count: 1 } => "Resumed: 1 missed change replayed".into(),
            Resumed::Recovered { count } => format!("Resumed: {count} missed changes replayed"),
            Resumed::NotRecovered(why) => match why {
                NotRecovered::Unknown => "Not resumed: no earlier subscription under this resume key for this topic and bindings; refetch".into(),
                NotRecovered::Expired => "Not resumed: the subscription was parked longer than the resume grace period; refetch".into(),
                NotRecovered::Pruned => "Not resumed: the change log no longer reaches back to where this subscription stopped; refetch".into(),
                NotRecovered::TooMany { max } => format!("Not resumed: more than {max} changes were missed; refetch"),
                NotRecovered::Failed => "Not resumed: the missed changes could not be read; refetch".into(),
                NotRecovered::Refused => "Not resumed: a postgres_changes entry could not be subscribed again, so its missed changes were not replayed; refetch".into(),
            },
        }
    }
}

/// A `system` message on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemMessage {
    /// The channel's postgres_changes subscriptions are live.
    SubscribedToPostgres,
    /// One postgres_changes entry failed; the channel stays open.
    Changes(ChangesError),
    /// The hub is going away; the socket closes next (clients reconnect).
    ServerDisconnect,
    /// The channel is ended; `phx_close` follows.
    Closed(ChannelError),
    /// A resuming join: what was replayed (status ok either way; the channel stays).
    Resume(Resumed),
    /// A row-scope policy raised for this subscriber's claims on `table`: its changes of
    /// that table are not delivered (others' are). Status `ok`: Python turns any `error`
    /// into a channel error and rejoins, losing events meanwhile.
    RowScopeProblem { table: String, problem: String },
    /// Broadcast Replay sent the newest `sent` of `stored` messages; the older ones were
    /// left out by the limit. Status `ok` for the same reason.
    ReplayLeftOut { sent: usize, stored: u64 },
    /// `replication_ready` was asked: the hub reads the change log, so database
    /// broadcasts (and row changes) committed from now on reach the channel.
    ReplicationReady,
}

impl SystemMessage {
    /// The payload: all four keys, as Python's model requires. `channel` is the topic
    /// without `realtime:`.
    pub fn payload(&self, channel: &str) -> Value {
        let (extension, status, message) = match self {
            SystemMessage::SubscribedToPostgres => (
                "postgres_changes",
                "ok",
                "Subscribed to PostgreSQL".to_owned(),
            ),
            SystemMessage::Changes(e) => ("postgres_changes", "error", e.to_string()),
            SystemMessage::ServerDisconnect => {
                ("system", "ok", "Server requested disconnect".into())
            }
            SystemMessage::ReplicationReady => {
                ("system", "ok", "Replication connection established".into())
            }
            SystemMessage::Closed(e) => ("system", "error", e.to_string()),
            SystemMessage::Resume(r) => {
                let (recovered, count) = match r {
                    Resumed::Recovered { count } => (true, *count),
                    Resumed::NotRecovered(_) => (false, 0),
                };
                return json!({
                    "extension": "postgres_changes",
                    "status": "ok",
                    "recovered": recovered,
                    "count": count,
                    "message": r.message(),
                    "channel": channel,
                });
            }
            SystemMessage::RowScopeProblem { table, problem } => (
                "postgres_changes",
                "ok",
                format!("Changes of {table} are not delivered to this subscriber: its row-level security check failed: {problem}"),
            ),
            SystemMessage::ReplayLeftOut { sent, stored } => (
                "broadcast",
                "ok",
                format!(
                    "Replay sent the newest {sent} of {stored} stored messages; {} older messages were left out by the limit",
                    stored.saturating_sub(*sent as u64)
                ),
            ),
        };
        json!({
            "extension": extension,
            "status": status,
            "message": message,
            "channel": channel,
        })
    }
}

/// An entry of a postgres_changes frame's `data.errors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowError {
    /// INSERT/UPDATE on a table without a primary key (no row data is sent).
    NoPrimaryKey,
    /// The record is over 1 MB: fields longer than 64 bytes were dropped.
    TooLarge,
}

impl RowError {
    pub fn text(self) -> &'static str {
        match self {
            RowError::NoPrimaryKey => "Error 400: Bad Request, no primary key",
            RowError::TooLarge => "Error 413: Payload Too Large",
        }
    }
}

impl serde::Serialize for RowError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.text())
    }
}

/// An HTTP error answer: the WebSocket upgrade's `{"error": ...}` bodies and the REST
/// endpoints' `{"message": ...}` / `{"errors": {...}}` bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// Upgrade without a usable apikey.
    Token(TokenError),
    /// Upgrade with an unknown `vsn`.
    BadVsn(super::DecodeError),
    /// Upgrade with a `resume` key that is empty, too long or has odd characters.
    BadResumeKey,
    TooManyConnections,
    Restarting,
    /// REST call without a valid token.
    Unauthorized,
    /// REST batch over the size allowed in one request, or larger than the rate limit
    /// ever admits at once.
    BatchTooLarge,
    /// REST broadcasts over the rate allowed per token or per client address.
    RateLimited,
    /// REST single broadcast to a private topic the token may not write.
    WriteDenied,
    /// A `realtime.messages` policy raised while deciding a REST private broadcast.
    RlsPolicyError,
    /// The database could not be reached to decide a REST private broadcast.
    DatabaseUnavailable,
    /// REST body over the request size limit (`limit` bytes).
    BodyTooLarge {
        limit: usize,
    },
    /// REST body that could not be read (the client stopped sending it).
    BodyUnreadable,
    /// REST single broadcast whose Content-Type is neither JSON nor binary.
    UnsupportedMediaType,
    /// No route at this path.
    NoRoute,
    /// A route at this path, not for this method.
    WrongMethod,
    /// REST body that cannot be used; `field` names the part (`messages[3]`, `payload`).
    Unprocessable {
        field: String,
        problem: BodyProblem,
    },
}

/// What is wrong with part of a REST body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyProblem {
    NotJsonObject,
    MessagesMissing,
    MessageIncomplete,
    PayloadTooLarge,
    PayloadNotJson,
    TopicMissing,
    /// A private topic Postgres cannot hold (see [`refuse_nul`]).
    NulCharacter,
    /// Not a boolean as Ecto casts one (`true`, `false`, `"true"`, `"false"`, `"1"`, `"0"`).
    NotBoolean,
    /// JSON nested past the hub's reader (see `DecodeError::TooDeep`).
    TooDeep,
}

impl BodyProblem {
    fn text(self) -> &'static str {
        match self {
            BodyProblem::NotJsonObject => "must be a JSON object with a messages array",
            BodyProblem::MessagesMissing => "is required and must be an array",
            BodyProblem::MessageIncomplete => "needs a topic, an event and an object payload",
            BodyProblem::PayloadTooLarge => "Payload size exceeds tenant limit",
            BodyProblem::PayloadNotJson => "must be valid JSON",
            BodyProblem::TopicMissing => "is required",
            BodyProblem::NulCharacter => "must not contain a NUL character",
            BodyProblem::NotBoolean => "is invalid",
            BodyProblem::TooDeep => "is JSON nested deeper than 127 levels",
        }
    }
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Token(_) | HttpError::Unauthorized => 401,
            HttpError::BadVsn(_) | HttpError::BadResumeKey | HttpError::BodyUnreadable => 400,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::UnsupportedMediaType => 415,
            HttpError::NoRoute => 404,
            HttpError::WrongMethod => 405,
            HttpError::TooManyConnections | HttpError::BatchTooLarge | HttpError::RateLimited => {
                429
            }
            HttpError::Restarting => 503,
            HttpError::WriteDenied => 403,
            HttpError::Unprocessable { .. }
            | HttpError::RlsPolicyError
            | HttpError::DatabaseUnavailable => 422,
        }
    }

    pub fn body(&self) -> Value {
        match self {
            HttpError::Token(e) => json!({ "error": e.http_text() }),
            HttpError::BadVsn(e) => json!({ "error": e.to_string() }),
            HttpError::BadResumeKey => json!({
                "error": "resume must be 1 to 128 characters: letters, digits, '-', '_', '.' or ':'"
            }),
            HttpError::TooManyConnections => json!({ "error": "Too many connected users" }),
            HttpError::Restarting => json!({ "error": "Realtime is restarting, please standby" }),
            HttpError::Unauthorized | HttpError::WriteDenied => {
                json!({ "message": "Unauthorized" })
            }
            HttpError::RlsPolicyError => json!({ "message": "RLS policy error" }),
            HttpError::DatabaseUnavailable => json!({ "message": "Tenant database unavailable" }),
            HttpError::BatchTooLarge => {
                json!({ "message": "Too many messages to broadcast, please reduce the batch size" })
            }
            HttpError::RateLimited => json!({ "message": "You have exceeded your rate limit" }),
            HttpError::BodyTooLarge { limit } => {
                json!({ "message": format!("Request body is larger than {limit} bytes") })
            }
            HttpError::BodyUnreadable => json!({ "message": "Request body could not be read" }),
            HttpError::NoRoute => json!({ "message": "Not Found" }),
            HttpError::WrongMethod => json!({ "message": "Method Not Allowed" }),
            HttpError::UnsupportedMediaType => json!({
                "error": "Unsupported Media Type. Use application/json or application/octet-stream"
            }),
            HttpError::Unprocessable { field, problem } => {
                json!({ "errors": { field.as_str(): [problem.text()] } })
            }
        }
    }
}

/// An inspector API answer that is not data: the body is `{"error": <text>}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectorError {
    /// No session, or it expired: the page shows the sign-in form.
    #[error("Sign in with a service_role token or the admin secret")]
    SignInRequired,
    #[error("Enter a service_role token or the admin secret")]
    NoCredentials,
    /// The token does not verify: why, in full (`Token has expired 5 seconds ago`), as
    /// the token check tells it.
    #[error("{0}")]
    Token(TokenError),
    #[error("This token's role is {role:?}; admin access needs a service_role token")]
    NotServiceRole { role: String },
    #[error("That is not the admin secret")]
    WrongSecret,
    #[error("This hub has no admin secret; sign in with a service_role token")]
    NoAdminSecret,
    /// The failure budget is spent; it allows another attempt in `retry_after_secs`.
    #[error("Too many sign-in attempts; wait a few seconds")]
    TooManyAttempts { retry_after_secs: u64 },
    /// A state-changing request from another origin.
    #[error("Cross-origin request refused")]
    CrossOrigin,
    #[error("This hub has no HS256 secret (jwt_secret), so it cannot mint tokens; paste a token instead")]
    CannotMint,
    #[error("{0}")]
    BadRequest(InspectorBadRequest),
    /// Signing failed (an operator problem, not the visitor's).
    #[error("Could not sign the token: {0}")]
    MintFailed(String),
}

/// What is wrong with an inspector request body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectorBadRequest {
    #[error("The body must be a JSON object")]
    NotJsonObject,
    #[error("`role` must be a non-empty string")]
    RoleMissing,
    #[error("`claims` must be a JSON object")]
    ClaimsNotObject,
    /// The role is one the hub refuses (outside `allowed_roles`, or not available).
    #[error("{0}; the hub would refuse a token with it")]
    Role(TokenError),
}

impl InspectorError {
    pub fn status(&self) -> u16 {
        match self {
            InspectorError::SignInRequired
            | InspectorError::NoCredentials
            | InspectorError::Token(_)
            | InspectorError::NotServiceRole { .. }
            | InspectorError::WrongSecret
            | InspectorError::NoAdminSecret => 401,
            InspectorError::TooManyAttempts { .. } => 429,
            InspectorError::CrossOrigin => 403,
            InspectorError::CannotMint => 409,
            InspectorError::BadRequest(_) => 422,
            InspectorError::MintFailed(_) => 500,
        }
    }

    pub fn body(&self) -> Value {
        json!({ "error": self.to_string() })
    }

    /// The `Retry-After` seconds of a refusal that passes with time.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            InspectorError::TooManyAttempts { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }
}

/// Why the hub closes a socket; each has a WebSocket close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Outbound queue full: the client does not read fast enough.
    SlowConsumer,
    /// No inbound frame within the idle timeout.
    IdleTimeout,
    /// The hub is shutting down; clients should reconnect (elsewhere).
    Shutdown,
    /// The client sent a message larger than the configured maximum.
    FrameTooLarge,
    /// The client sent a text frame that is not valid UTF-8.
    InvalidUtf8,
    /// The client joined channels faster than allowed (Supabase disconnects too).
    TooManyJoins,
    /// The client closed or the socket failed.
    Gone,
    /// The hub failed partway through deciding a frame for this connection (a bug): the
    /// client reconnects and, if it resumes, replays from what it had read.
    InternalError,
}

impl Close {
    pub fn code(self) -> u16 {
        match self {
            Close::SlowConsumer | Close::TooManyJoins => 1008,
            Close::IdleTimeout | Close::Gone => 1000,
            Close::Shutdown => 1001,
            Close::FrameTooLarge => 1009,
            Close::InvalidUtf8 => 1007,
            Close::InternalError => 1011,
        }
    }

    /// Whether what is queued is still written before the close frame: not for a slow
    /// consumer (it is the backlog), nor after an internal error (frames queued after the
    /// undecided one must not be read as following it).
    pub fn drains(self) -> bool {
        !matches!(self, Close::SlowConsumer | Close::InternalError)
    }

    pub fn text(self) -> &'static str {
        match self {
            Close::SlowConsumer => "slow consumer: outbound queue full",
            Close::IdleTimeout => "idle timeout: no frame received",
            Close::Shutdown => "server shutting down",
            Close::FrameTooLarge => "message too large",
            Close::InvalidUtf8 => "text frame is not valid UTF-8",
            Close::TooManyJoins => "Too many joins per second",
            Close::Gone => "closed",
            Close::InternalError => "internal error: reconnect",
        }
    }
}

/// An answer of the change feed (`GET /realtime/v1/api/changes`) that is not changes:
/// the body is `{"message": <text>}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    #[error("Unauthorized")]
    Unauthorized,
    /// A view, materialized view or foreign table the reader may select from.
    #[error(
        "{table} is a {kind}, and realtime captures tables only; ask for the tables it reads from"
    )]
    NotATable { table: String, kind: String },
    /// A token the hub refused, and why (as a WebSocket connect is told).
    #[error("Unauthorized: {0}")]
    BadToken(String),
    #[error("`tables` must be schema.table names separated by commas: {0}")]
    BadTables(String),
    /// A table name Postgres cannot hold (see [`refuse_nul`]).
    #[error("{0}")]
    BadName(String),
    #[error("table {0} does not exist")]
    NoSuchTable(String),
    /// To a role other than service_role: one answer for both, as a join gives it.
    #[error("table {table} does not exist or role {role} may not select from it")]
    NoVisibleTable { table: String, role: String },
    #[error("table {table} is not enabled for realtime; enable it with: {}", enable_sql(.table))]
    NotEnabled { table: String },
    #[error("table {table} cannot be captured: tables in schema {schema} are never captured")]
    NotCapturable { table: String, schema: String },
    #[error("`limit` must be a whole number from 1 to {max}")]
    BadLimit { max: usize },
    #[error("`wait` must be a whole number of seconds from 0 to {max}")]
    BadWait { max: u64 },
    /// A query string that cannot be read (a field given twice, bad percent-encoding):
    /// the text names the problem.
    #[error("{0}")]
    BadQuery(String),
    #[error("`cursor` is not a cursor this hub handed out; start without one")]
    BadCursor,
    /// The log was pruned past the cursor: changes after it are gone.
    #[error("the change log was pruned past this cursor, so changes after it are gone; resync the tables and start again without a cursor")]
    CursorGone,
    #[error("the hub has no database")]
    NoDatabase,
    #[error("the database is unavailable; try again")]
    Unavailable,
}

impl FeedError {
    pub fn status(&self) -> u16 {
        match self {
            FeedError::Unauthorized | FeedError::BadToken(_) => 401,
            FeedError::BadTables(_)
            | FeedError::BadQuery(_)
            | FeedError::BadName(_)
            | FeedError::NoSuchTable(_)
            | FeedError::NoVisibleTable { .. }
            | FeedError::NotATable { .. }
            | FeedError::NotEnabled { .. }
            | FeedError::NotCapturable { .. }
            | FeedError::BadLimit { .. }
            | FeedError::BadWait { .. }
            | FeedError::BadCursor => 400,
            FeedError::CursorGone => 410,
            FeedError::NoDatabase | FeedError::Unavailable => 503,
        }
    }

    pub fn body(&self) -> Value {
        json!({ "message": self.to_string() })
    }
}

/// An answer of the webhooks API (`/realtime/v1/api/webhooks`, the inspector's buttons)
/// that is not data: the body is `{"message": <text>}`. (Refused credentials answer as
/// every admin surface does: `InspectorError`.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookApiError {
    #[error("no webhook named {0:?}")]
    NotFound(String),
    #[error("unknown webhook action {0:?}: use pause, resume, retry or replay")]
    UnknownAction(String),
    #[error("`from` must be a timestamp like 2024-05-01T12:00:00Z")]
    BadFrom,
    /// An argument the operation refused, in its own words.
    #[error("{0}")]
    BadArgument(String),
    #[error("the hub has no database")]
    NoDatabase,
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
}

impl WebhookApiError {
    pub fn status(&self) -> u16 {
        match self {
            WebhookApiError::NotFound(_) | WebhookApiError::UnknownAction(_) => 404,
            WebhookApiError::BadFrom | WebhookApiError::BadArgument(_) => 422,
            WebhookApiError::NoDatabase | WebhookApiError::Unavailable(_) => 503,
        }
    }

    pub fn body(&self) -> Value {
        json!({ "message": self.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_errors_read_as_code_colon_message_in_join_replies() {
        assert_eq!(
            ReplyError::Token(TokenError::Expired { seconds_ago: 3 }).to_string(),
            "InvalidJWTToken: Token has expired 3 seconds ago"
        );
        assert_eq!(
            ReplyError::Token(TokenError::Malformed).to_string(),
            "MalformedJWT: The token provided is not a valid JWT"
        );
        assert_eq!(
            ReplyError::Token(TokenError::Signature).to_string(),
            "JwtSignatureError: Failed to validate JWT signature"
        );
    }

    #[test]
    fn rate_limit_reasons_start_with_the_codes_python_backs_off_on() {
        assert!(ReplyError::TooManyChannels
            .to_string()
            .starts_with("ChannelRateLimitReached: "));
        assert!(ReplyError::TooManyJoins
            .to_string()
            .starts_with("ClientJoinRateLimitReached: "));
    }

    #[test]
    fn an_expired_apikey_gets_the_short_http_text() {
        let e = HttpError::Token(TokenError::Expired { seconds_ago: 9 });
        assert_eq!(
            (e.status(), e.body()),
            (401, json!({"error": "Token has expired"}))
        );
    }

    #[test]
    fn system_payloads_have_all_four_keys() {
        assert_eq!(
            SystemMessage::SubscribedToPostgres.payload("room1"),
            json!({"message":"Subscribed to PostgreSQL","status":"ok",
                   "extension":"postgres_changes","channel":"room1"})
        );
        assert_eq!(
            SystemMessage::Closed(ChannelError::Token(TokenError::Expired { seconds_ago: 3 }))
                .payload("room1"),
            json!({"message":"Token has expired 3 seconds ago","status":"error",
                   "extension":"system","channel":"room1"})
        );
    }

    #[test]
    fn inspector_errors_carry_their_status_and_an_error_body() {
        let e = InspectorError::Token(TokenError::Expired { seconds_ago: 4 });
        assert_eq!(
            (e.status(), e.body()),
            (401, json!({"error": "Token has expired 4 seconds ago"}))
        );
        let spent = InspectorError::TooManyAttempts {
            retry_after_secs: 2,
        };
        assert_eq!((spent.status(), spent.retry_after_secs()), (429, Some(2)));
        assert_eq!(InspectorError::WrongSecret.retry_after_secs(), None);
        assert_eq!(
            InspectorError::BadRequest(InspectorBadRequest::RoleMissing).body(),
            json!({"error": "`role` must be a non-empty string"})
        );
        assert_eq!(
            enable_statement("public.jobs"),
            "select realtime.enable('public.jobs');"
        );
    }

    #[test]
    fn resume_outcomes_are_ok_system_messages_with_recovered_and_count() {
        assert_eq!(
            SystemMessage::Resume(Resumed::Recovered { count: 3 }).payload("room"),
            json!({"extension":"postgres_changes","status":"ok","recovered":true,"count":3,
                   "message":"Resumed: 3 missed changes replayed","channel":"room"})
        );
        assert_eq!(
            SystemMessage::Resume(Resumed::Recovered { count: 1 }).payload("room")["message"],
            "Resumed: 1 missed change replayed"
        );
        let p = SystemMessage::Resume(Resumed::NotRecovered(NotRecovered::Expired)).payload("room");
        assert_eq!(
            (&p["recovered"], &p["count"], &p["status"]),
            (&json!(false), &json!(0), &json!("ok"))
        );
    }

    #[test]
    fn not_enabled_names_both_ways_to_fix_it() {
        let e = ChangesError::NotEnabled {
            table: "public.\"it's\"".into(),
        };
        assert_eq!(
            e.to_string(),
            "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: \
             table public.\"it's\" is not enabled for realtime; add it to the publication with: \
             alter publication supabase_realtime add table public.\"it's\"; \
             or enable it with: select realtime.enable('public.\"it''s\"')"
        );
    }

    #[test]
    fn private_channel_and_replay_texts_are_supabases() {
        assert_eq!(
            ReplyError::ReplayOnPublicChannel.to_string(),
            "UnableToReplayMessages: Replay is not allowed for public channels"
        );
        assert_eq!(
            ChannelError::ReadLost {
                channel: "room:1".into()
            }
            .to_string(),
            "You no longer have permission to read from this Channel topic: room:1"
        );
        assert_eq!(
            ReplyError::ChangesWaitTimeout { ms: 1500 }.to_string(),
            "PostgresChangesSubscribeTimeout: Timed out after 1500ms waiting for the postgres_changes subscription"
        );
        assert_eq!(
            (
                HttpError::WriteDenied.status(),
                HttpError::WriteDenied.body()
            ),
            (403, json!({"message": "Unauthorized"}))
        );
    }

    #[test]
    fn informational_system_messages_never_carry_status_error() {
        // Python turns any status "error" into a channel error and a rejoin.
        for m in [
            SystemMessage::RowScopeProblem {
                table: "public.t".into(),
                problem: "boom".into(),
            },
            SystemMessage::ReplayLeftOut {
                sent: 25,
                stored: 40,
            },
        ] {
            assert_eq!(m.payload("room")["status"], "ok", "{m:?}");
        }
        assert_eq!(
            SystemMessage::ReplayLeftOut { sent: 25, stored: 40 }.payload("room")["message"],
            "Replay sent the newest 25 of 40 stored messages; 15 older messages were left out by the limit"
        );
    }
    #[test]
    fn feed_errors_say_what_to_do_and_a_pruned_cursor_is_gone() {
        assert_eq!(FeedError::CursorGone.status(), 410);
        assert!(FeedError::CursorGone.to_string().contains("resync"));
        let e = FeedError::NotEnabled {
            table: "public.jobs".into(),
        };
        assert_eq!(e.status(), 400);
        assert_eq!(
            e.body(),
            json!({"message": "table public.jobs is not enabled for realtime; enable it with: select realtime.enable('public.jobs')"})
        );
        assert_eq!(WebhookApiError::BadFrom.status(), 422);
        assert_eq!(WebhookApiError::BadArgument("x".into()).status(), 422);
    }

    #[test]
    fn a_name_with_a_nul_is_refused_with_the_nul_shown() {
        assert_eq!(refuse_nul("topic", "room"), Ok(()));
        assert_eq!(
            refuse_nul("topic", "ro\0om"),
            Err(r#"topic "ro\0om" contains a NUL character"#.to_owned())
        );
    }
}
