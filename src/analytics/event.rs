//! Analytics events and the HTTP requests that deliver them.
//!
//! Events are queued with integer keys and turned into public IDs only when they are
//! delivered, so recording an event on the request path costs no encoding. The wire format
//! follows the original service's analytics client, with a few additive fields (`timestamp`,
//! `response_time_ms`, `title`) that its receiver ignores:
//!
//! | event | request | body |
//! |---|---|---|
//! | API usage | `POST /api/v1/analytics/track/api-usage-public` | `{endpoint, method, user_id, status_code, response_time, response_time_ms, timestamp}` |
//! | conversation | `POST /api/v1/analytics/track/conversation-public` | `{conversation_id, user_id, action, title, timestamp}` |
//! | message | `POST /api/v1/analytics/track/message-public` | `{message_id, conversation_id, user_id, role, token_count, response_time, model_used, timestamp}` |
//! | user provisioned | `POST /api/v1/analytics/users/sync-profile` | `{user_id, username, email, role, roles, timestamp}`, also as query parameters |
//! | user deleted | `DELETE /api/v1/analytics/users/{username}?user_id=...` | none; bearer token |
//!
//! - `endpoint` is the matched route template (`/api/v1/users/{user_id}/conversations`), not
//!   the raw path: it aggregates well and never carries IDs or usernames; `unmatched` for 404s.
//! - `response_time` is in seconds (the original's unit); `response_time_ms` in milliseconds.
//! - `user_id`, `conversation_id` and `message_id` are public IDs; `user_id` is `null` for
//!   anonymous requests and conversations.
//! - `action` is `created`, `ended` or `deleted`.
//! - A message's `response_time` is in seconds too, converted from the stored milliseconds.
//! - `sync-profile` takes its fields as query parameters in the original; they are sent both
//!   ways. `role` is the most privileged of `roles` (`admin`, `manager`, else the first, else
//!   `user`).
//! - The user deletion is the original's admin-only route, authenticated with a short-lived
//!   token the service mints for itself (`sub` `chat-service`, role `admin`).
//! - `timestamp` is when the event happened (RFC 3339 UTC), not when it was delivered.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use hyper::Method;
use serde::Serialize;
use url::Url;

use crate::db::{Conversation, Message, MessageRole, User};
use crate::ids::IdCodec;

/// Something worth telling the analytics service about.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// One HTTP request, recorded by the middleware.
    ApiUsage(ApiUsage),
    /// A conversation was created, ended or deleted.
    Conversation(ConversationEvent),
    /// A message was stored.
    Message(MessageEvent),
    /// A user was provisioned from a token.
    UserSynced(UserProfile),
    /// A user was deleted with their data.
    UserDeleted(UserDeleted),
}

/// One HTTP request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiUsage {
    /// Matched route template, or `unmatched`.
    pub endpoint: String,
    /// HTTP method.
    pub method: String,
    /// Caller's key, when authenticated.
    pub user_id: Option<i64>,
    /// Answered status.
    pub status_code: u16,
    /// Time to the response head.
    pub response_time: Duration,
    /// When the request arrived.
    pub at: DateTime<Utc>,
}

/// What happened to a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationAction {
    /// Created.
    Created,
    /// Ended (not again when ended twice).
    Ended,
    /// Deleted with its messages.
    Deleted,
}

impl ConversationAction {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Ended => "ended",
            Self::Deleted => "deleted",
        }
    }
}

/// A conversation's lifecycle event.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationEvent {
    /// What happened.
    pub action: ConversationAction,
    /// Conversation key.
    pub conversation_id: i64,
    /// Owner's key; `None` for anonymous conversations.
    pub user_id: Option<i64>,
    /// Title, when known.
    pub title: Option<String>,
    /// When it happened.
    pub at: DateTime<Utc>,
}

impl ConversationEvent {
    /// The event of this action on a conversation row.
    pub fn new(action: ConversationAction, conversation: &Conversation) -> Self {
        Self {
            action,
            conversation_id: conversation.id,
            user_id: conversation.user_id,
            title: Some(conversation.title.clone()),
            at: Utc::now(),
        }
    }
}

/// A stored message.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageEvent {
    /// Message key.
    pub message_id: i64,
    /// Conversation key.
    pub conversation_id: i64,
    /// Key of the user it was stored for; `None` in anonymous conversations.
    pub user_id: Option<i64>,
    /// Author.
    pub role: MessageRole,
    /// Tokens used, when known.
    pub tokens_used: Option<i64>,
    /// Time to produce the reply in milliseconds, when known.
    pub response_time_ms: Option<f64>,
    /// Model that wrote it.
    pub model: Option<String>,
    /// When it was stored.
    pub at: DateTime<Utc>,
}

impl MessageEvent {
    /// The event of a message stored for `user_id`.
    pub fn new(message: &Message, user_id: Option<i64>) -> Self {
        Self {
            message_id: message.id,
            conversation_id: message.conversation_id,
            user_id,
            role: message.role,
            tokens_used: message.tokens_used,
            response_time_ms: message.response_time,
            model: message.model.clone(),
            at: message.timestamp,
        }
    }
}

/// A user's profile, sent when the user is provisioned.
#[derive(Debug, Clone, PartialEq)]
pub struct UserProfile {
    /// User key.
    pub user_id: i64,
    /// Username.
    pub username: String,
    /// Email, if known.
    pub email: Option<String>,
    /// Roles from the token.
    pub roles: Vec<String>,
    /// When it happened.
    pub at: DateTime<Utc>,
}

/// A deleted user.
#[derive(Debug, Clone, PartialEq)]
pub struct UserDeleted {
    /// User key (the row is gone; kept for the public ID).
    pub user_id: i64,
    /// Username, the original's key in the analytics service.
    pub username: String,
}

impl UserDeleted {
    /// The event of a deleted user row.
    pub fn new(user: &User) -> Self {
        Self {
            user_id: user.id,
            username: user.username.clone(),
        }
    }
}

/// One HTTP request to the analytics service.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Method.
    pub method: Method,
    /// Path and query (the base URL's path first), as the request line carries them.
    pub target: String,
    /// JSON body, if any.
    pub body: Option<Bytes>,
    /// Whether the request needs the service's own bearer token.
    pub needs_token: bool,
}

/// The path of API usage events.
pub const API_USAGE_PATH: &str = "/api/v1/analytics/track/api-usage-public";
/// The path of conversation events.
pub const CONVERSATION_PATH: &str = "/api/v1/analytics/track/conversation-public";
/// The path of message events.
pub const MESSAGE_PATH: &str = "/api/v1/analytics/track/message-public";
/// The path of user profile synchronisation.
pub const SYNC_PROFILE_PATH: &str = "/api/v1/analytics/users/sync-profile";
/// The prefix of a user's analytics; the username follows.
pub const USERS_PATH: &str = "/api/v1/analytics/users";

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The most privileged role, the original's single `role`.
fn primary_role(roles: &[String]) -> &str {
    ["admin", "manager"]
        .into_iter()
        .find(|r| roles.iter().any(|have| have == r))
        .or_else(|| roles.first().map(String::as_str))
        .unwrap_or("user")
}

impl Event {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ApiUsage(_) => "api_usage",
            Self::Conversation(_) => "conversation",
            Self::Message(_) => "message",
            Self::UserSynced(_) => "user_synced",
            Self::UserDeleted(_) => "user_deleted",
        }
    }

    /// The request that delivers this event to the service at `base` (no trailing slash
    /// needed), with public IDs from `ids`. Bodies are serialized straight from the event.
    pub fn to_request(&self, base: &Url, ids: &IdCodec) -> Outgoing {
        let prefix = base.path().trim_end_matches('/');
        let user = |key: Option<i64>| key.map(|k| ids.user.encode(k));
        let post = |path: &str, body: Bytes| Outgoing {
            method: Method::POST,
            target: format!("{prefix}{path}"),
            body: Some(body),
            needs_token: false,
        };
        match self {
            Self::ApiUsage(e) => post(
                API_USAGE_PATH,
                json(&ApiUsageBody {
                    endpoint: &e.endpoint,
                    method: &e.method,
                    user_id: user(e.user_id),
                    status_code: e.status_code,
                    response_time: e.response_time.as_secs_f64(),
                    response_time_ms: e.response_time.as_secs_f64() * 1000.0,
                    timestamp: timestamp(e.at),
                }),
            ),
            Self::Conversation(e) => post(
                CONVERSATION_PATH,
                json(&ConversationBody {
                    conversation_id: ids.conversation.encode(e.conversation_id),
                    user_id: user(e.user_id),
                    action: e.action.as_str(),
                    title: e.title.as_deref(),
                    timestamp: timestamp(e.at),
                }),
            ),
            Self::Message(e) => post(
                MESSAGE_PATH,
                json(&MessageBody {
                    message_id: ids.message.encode(e.message_id),
                    conversation_id: ids.conversation.encode(e.conversation_id),
                    user_id: user(e.user_id),
                    role: e.role.as_str(),
                    token_count: e.tokens_used.unwrap_or(0),
                    response_time: e.response_time_ms.map(|ms| ms / 1000.0),
                    model_used: e.model.as_deref(),
                    timestamp: timestamp(e.at),
                }),
            ),
            Self::UserSynced(e) => {
                let user_id = ids.user.encode(e.user_id);
                let role = primary_role(&e.roles);
                let mut query = url::form_urlencoded::Serializer::new(String::new());
                query
                    .append_pair("user_id", &user_id)
                    .append_pair("username", &e.username)
                    .append_pair("role", role);
                if let Some(email) = &e.email {
                    query.append_pair("email", email);
                }
                let mut request = post(
                    SYNC_PROFILE_PATH,
                    json(&ProfileBody {
                        user_id: &user_id,
                        username: &e.username,
                        email: e.email.as_deref(),
                        role,
                        roles: &e.roles,
                        timestamp: timestamp(e.at),
                    }),
                );
                request.target = format!("{}?{}", request.target, query.finish());
                request
            }
            Self::UserDeleted(e) => {
                let mut url = join(base, USERS_PATH);
                // A path segment, escaped: usernames may hold anything but control characters.
                if let Ok(mut segments) = url.path_segments_mut() {
                    segments.push(&e.username);
                }
                url.query_pairs_mut()
                    .append_pair("user_id", &ids.user.encode(e.user_id));
                Outgoing {
                    method: Method::DELETE,
                    target: format!("{}?{}", url.path(), url.query().unwrap_or_default()),
                    body: None,
                    needs_token: true,
                }
            }
        }
    }
}

/// The body of an API usage event.
#[derive(Serialize)]
struct ApiUsageBody<'a> {
    endpoint: &'a str,
    method: &'a str,
    user_id: Option<String>,
    status_code: u16,
    response_time: f64,
    response_time_ms: f64,
    timestamp: String,
}

/// The body of a conversation event.
#[derive(Serialize)]
struct ConversationBody<'a> {
    conversation_id: String,
    user_id: Option<String>,
    action: &'a str,
    title: Option<&'a str>,
    timestamp: String,
}

/// The body of a message event.
#[derive(Serialize)]
struct MessageBody<'a> {
    message_id: String,
    conversation_id: String,
    user_id: Option<String>,
    role: &'a str,
    token_count: i64,
    response_time: Option<f64>,
    model_used: Option<&'a str>,
    timestamp: String,
}

/// The body of a profile synchronisation.
#[derive(Serialize)]
struct ProfileBody<'a> {
    user_id: &'a str,
    username: &'a str,
    email: Option<&'a str>,
    role: &'a str,
    roles: &'a [String],
    timestamp: String,
}

/// A body as JSON bytes. The bodies are plain structs of strings and numbers, which
/// always serialize.
fn json<T: Serialize>(body: &T) -> Bytes {
    serde_json::to_vec(body).unwrap_or_default().into()
}

/// `base` with `path` appended to its own path (a base may live under a prefix), no query.
fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    url.set_query(None);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("http://analytics:8002/prefix/").unwrap()
    }

    fn body_of(request: &Outgoing) -> serde_json::Value {
        serde_json::from_slice(request.body.as_ref().expect("a body")).expect("JSON")
    }

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn api_usage_carries_public_ids_and_both_time_units() {
        let ids = IdCodec::new("salt");
        let event = Event::ApiUsage(ApiUsage {
            endpoint: "/api/v1/users/{user_id}".into(),
            method: "GET".into(),
            user_id: Some(7),
            status_code: 200,
            response_time: Duration::from_millis(250),
            at: at(),
        });
        let out = event.to_request(&base(), &ids);
        assert_eq!(out.method, Method::POST);
        assert_eq!(
            out.target,
            "/prefix/api/v1/analytics/track/api-usage-public"
        );
        let body = body_of(&out);
        assert_eq!(body["user_id"], ids.user.encode(7));
        assert_eq!(body["response_time"], 0.25);
        assert_eq!(body["response_time_ms"], 250.0);
        assert_eq!(body["status_code"], 200);
        assert_eq!(body["timestamp"], "2025-01-02T03:04:05.000000Z");
    }

    #[test]
    fn messages_convert_milliseconds_and_default_tokens() {
        let ids = IdCodec::new("salt");
        let event = Event::Message(MessageEvent {
            message_id: 3,
            conversation_id: 2,
            user_id: None,
            role: MessageRole::Assistant,
            tokens_used: None,
            response_time_ms: Some(1500.0),
            model: Some("m".into()),
            at: at(),
        });
        let body = body_of(&event.to_request(&base(), &ids));
        assert_eq!(body["message_id"], ids.message.encode(3));
        assert_eq!(body["conversation_id"], ids.conversation.encode(2));
        assert_eq!(body["user_id"], serde_json::Value::Null);
        assert_eq!(body["token_count"], 0);
        assert_eq!(body["response_time"], 1.5);
        assert_eq!(body["role"], "assistant");
    }

    #[test]
    fn profiles_go_as_body_and_query_and_deletions_escape_the_username() {
        let ids = IdCodec::new("salt");
        let synced = Event::UserSynced(UserProfile {
            user_id: 1,
            username: "ann".into(),
            email: Some("a@b.c".into()),
            roles: vec!["user".into(), "manager".into()],
            at: at(),
        })
        .to_request(&base(), &ids);
        assert_eq!(body_of(&synced)["role"], "manager");
        assert_eq!(
            body_of(&synced)["roles"],
            serde_json::json!(["user", "manager"])
        );
        let (path, query) = synced.target.split_once('?').unwrap();
        assert_eq!(path, "/prefix/api/v1/analytics/users/sync-profile");
        let query: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        assert!(query.contains(&("email".into(), "a@b.c".into())));
        assert!(query.contains(&("user_id".into(), ids.user.encode(1))));

        let deleted = Event::UserDeleted(UserDeleted {
            user_id: 1,
            username: "a b/c".into(),
        })
        .to_request(&base(), &ids);
        assert_eq!(deleted.method, Method::DELETE);
        assert!(deleted.needs_token);
        assert_eq!(
            deleted.target,
            format!(
                "/prefix/api/v1/analytics/users/a%20b%2Fc?user_id={}",
                ids.user.encode(1)
            )
        );
        assert_eq!(deleted.body, None);
    }
}
