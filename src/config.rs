//! Typed settings read once at start from the environment and `.env` files.
//!
//! Each setting's variable, default and type is declared once, on its field below, and clap
//! parses them all; [`Settings::settle`] holds the few rules that join two variables.

use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::num::{ParseFloatError, ParseIntError};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use clap::builder::{ArgPredicate, BoolishValueParser, PossibleValuesParser, TypedValueParser};
use clap::error::{ContextKind, ContextValue};
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, ValueEnum};

/// A secret string whose `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value; call only where it is really used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines for a terminal.
    #[value(alias = "human", alias = "text")]
    Pretty,
    /// One JSON object per line for log collectors.
    Json,
}

/// Which LLM provider answers chat messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LlmProviderKind {
    /// Any OpenAI-compatible server through `async-openai`.
    #[value(name = "openai")]
    OpenAi,
    /// The built-in offline provider that echoes the user's message.
    Echo,
}

/// The OpenAI API, where requests go when `OPENAI_BASE_URL` is not set.
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// Settings of the LLM client.
#[derive(Debug, Clone, Args)]
pub struct LlmSettings {
    /// The provider in use (`echo` when no API key is configured and none is chosen).
    #[arg(
        long,
        env = "LLM_PROVIDER",
        ignore_case = true,
        default_value = "echo",
        default_value_if("api_key", ArgPredicate::IsPresent, "openai")
    )]
    pub provider: LlmProviderKind,
    /// Base URL of the OpenAI-compatible API, e.g. `https://api.openai.com/v1`.
    #[arg(long, env = "OPENAI_BASE_URL", default_value = DEFAULT_OPENAI_BASE_URL)]
    pub base_url: String,
    /// API key; `None` for servers that need none.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,
    /// Default model for new conversations.
    #[arg(long, env = "OPENAI_MODEL", default_value = "gpt-4o-mini")]
    pub model: String,
    /// Models a conversation may choose; the default model is always allowed.
    #[arg(long, env = "OPENAI_ALLOWED_MODELS", default_value = "", value_parser = list)]
    pub allowed_models: std::vec::Vec<String>,
    /// Sampling temperature.
    #[arg(long, env = "OPENAI_TEMPERATURE", default_value_t = 0.7, value_parser = temperature)]
    pub temperature: f32,
    /// Maximum tokens in one reply.
    #[arg(long, env = "OPENAI_MAX_TOKENS", default_value_t = 1024)]
    pub max_tokens: u32,
    /// How long one LLM request may take up to its response headers and first token.
    #[arg(long, env = "OPENAI_TIMEOUT_SECONDS", default_value = "60", value_parser = seconds)]
    pub timeout: Duration,
    /// How long a streaming reply may go without a chunk.
    #[arg(long, env = "OPENAI_STREAM_IDLE_SECONDS", default_value = "30", value_parser = seconds)]
    pub stream_idle: Duration,
    /// How long one reply may stream in all.
    #[arg(long, env = "OPENAI_MAX_REPLY_SECONDS", default_value = "600", value_parser = seconds)]
    pub max_reply: Duration,
    /// Longest reply in characters: past it the service stops reading and keeps what it has.
    #[arg(long, env = "LLM_MAX_REPLY_CHARS", default_value_t = 100_000)]
    pub max_reply_chars: usize,
    /// Retries after the first attempt on 429, 5xx and connection errors.
    #[arg(long, env = "OPENAI_MAX_RETRIES", default_value_t = 3)]
    pub max_retries: u32,
    /// First backoff delay; doubled on every retry, with jitter.
    #[arg(long, env = "OPENAI_RETRY_BASE_MS", default_value = "500", value_parser = millis)]
    pub retry_base_delay: Duration,
    /// Token budget of the history sent with each request.
    #[arg(long, env = "CONTEXT_TOKEN_BUDGET", default_value_t = 6000)]
    pub context_token_budget: usize,
    /// Largest server-sent event of a reply, in bytes: past it the reply fails as unreadable.
    #[arg(long, env = "OPENAI_MAX_EVENT_BYTES", default_value_t = 1024 * 1024)]
    pub max_event_bytes: usize,
    /// Tool calls the model may ask for in one round: past it the round fails as unreadable.
    #[arg(long, env = "MCP_MAX_TOOL_CALLS", default_value_t = 16)]
    pub max_tool_calls: usize,
    /// Characters of tool-call arguments in one round, all calls together: past it the round
    /// is cut and the reply kept truncated.
    #[arg(long, env = "MCP_MAX_ARGUMENT_CHARS", default_value_t = 100_000)]
    pub max_argument_chars: usize,
}

/// Titles written by the LLM for new conversations.
#[derive(Debug, Clone, Args)]
pub struct TitleSettings {
    /// Whether a conversation still called "New Conversation" (or nothing) is named by the
    /// LLM after its first reply.
    #[arg(long, env = "AUTO_TITLE", default_value_t = true, action = ArgAction::Set,
          value_parser = BoolishValueParser::new())]
    pub auto_title: bool,
    /// The model that writes titles; `None`: the conversation's own model.
    #[arg(long, env = "TITLE_MODEL")]
    pub title_model: Option<String>,
}

/// Live chat across instances and reconnects.
#[derive(Debug, Clone, Args)]
pub struct LiveSettings {
    /// `redis://...` selects the Redis-backed hub; `None` keeps everything in this process.
    #[arg(long, env = "REDIS_URL", hide_env_values = true, value_parser = redis_url)]
    pub redis_url: Option<Secret>,
    /// Prefix of every Redis key and channel.
    #[arg(long, env = "REDIS_PREFIX", default_value = "chat-service")]
    pub redis_prefix: String,
    /// How long a generation's claim outlives an instance that stopped renewing it.
    #[arg(long, env = "GENERATION_LEASE_SECONDS", default_value = "30",
          value_parser = at_least(1_u64).map(Duration::from_secs))]
    pub generation_lease: Duration,
    /// How long a finished reply can still be resumed.
    #[arg(long, env = "RESUME_WINDOW_SECONDS", default_value = "300", value_parser = seconds)]
    pub resume_window: Duration,
}

/// Tools from users' MCP servers.
#[derive(Debug, Clone, Args)]
pub struct McpConfig {
    /// Rounds of tool calls in one reply at most.
    #[arg(long, env = "MCP_MAX_TOOL_ROUNDS", default_value_t = 4)]
    pub max_tool_rounds: usize,
    /// Bound of one call (and of one listing) of a server.
    #[arg(id = "mcp_timeout", long = "mcp-timeout", env = "MCP_TIMEOUT_SECONDS",
          default_value = "20", value_parser = seconds)]
    pub timeout: Duration,
    /// Longest tool result given to the model, in characters.
    #[arg(long, env = "MCP_MAX_RESULT_CHARS", default_value_t = 20_000)]
    pub max_result_chars: usize,
    /// Bytes one call (or one listing) may receive from a server: a JSON body, one SSE event,
    /// and a session's SSE events together.
    #[arg(long, env = "MCP_MAX_RESPONSE_BYTES", default_value_t = 4 * 1024 * 1024,
          value_parser = at_least(1024_usize))]
    pub max_response_bytes: usize,
    /// How long a server's tool list is reused.
    #[arg(long, env = "MCP_TOOLS_CACHE_SECONDS", default_value = "60", value_parser = seconds)]
    pub tools_cache: Duration,
    /// Hosts (or host:port) that receive the user's token.
    #[arg(long, env = "MCP_FORWARD_USER_TOKEN_HOSTS", default_value = "", value_parser = list)]
    pub forward_user_token_hosts: std::vec::Vec<String>,
    /// Hosts (or host:port) reached although their addresses are not globally routable or
    /// are this host's own.
    #[arg(long, env = "MCP_ALLOWED_HOSTS", default_value = "", value_parser = list)]
    pub allowed_hosts: std::vec::Vec<String>,
}

/// Limits that protect the service.
#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// Largest accepted HTTP request body in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1024 * 1024, value_parser = at_least(1024_usize))]
    pub max_body_bytes: usize,
    /// Largest accepted message content in characters.
    #[arg(long, env = "MAX_MESSAGE_CHARS", default_value_t = 32_000)]
    pub max_message_chars: usize,
    /// Largest accepted WebSocket frame in bytes.
    #[arg(long, env = "WS_MAX_FRAME_BYTES", default_value_t = 256 * 1024)]
    pub ws_max_frame_bytes: usize,
    /// Interval of server pings on idle WebSocket connections.
    #[arg(long, env = "WS_PING_INTERVAL_SECONDS", default_value = "30", value_parser = seconds)]
    pub ws_ping_interval: Duration,
    /// A WebSocket that sends nothing (not even a pong) for this long is closed.
    #[arg(long, env = "WS_IDLE_TIMEOUT_SECONDS", default_value = "90", value_parser = seconds)]
    pub ws_idle_timeout: Duration,
    /// Concurrent generations one user may run.
    #[arg(long, env = "MAX_GENERATIONS_PER_USER", default_value_t = 3)]
    pub max_generations_per_user: usize,
    /// A WebSocket whose outgoing frames cannot be written for this long is closed.
    #[arg(long, env = "WS_SEND_TIMEOUT_SECONDS", default_value = "10", value_parser = seconds)]
    pub ws_send_timeout: Duration,
    /// Browser origins that may open WebSockets; empty: any.
    #[arg(long, env = "WS_ALLOWED_ORIGINS", default_value = "", value_parser = list)]
    pub ws_allowed_origins: std::vec::Vec<String>,
    /// Anonymous WebSocket connections from one client address, deployment-wide.
    #[arg(long, env = "ANON_MAX_CONNECTIONS_PER_IP", default_value_t = 5)]
    pub anon_max_connections_per_ip: usize,
    /// Generations of all anonymous connections together, deployment-wide.
    #[arg(long, env = "ANON_MAX_GENERATIONS", default_value_t = 4)]
    pub anon_max_generations: usize,
    /// How long in-flight work may take to finish after a shutdown signal.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value = "10", value_parser = seconds)]
    pub shutdown_timeout: Duration,
    /// Time a client has to send a request's headers, also the longest idle time between
    /// the requests of a kept-alive connection; zero: no limit.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECONDS", default_value = "10", value_parser = seconds)]
    pub header_read_timeout: Duration,
    /// Time a request's body has to arrive once the handler reads it; zero: no limit.
    #[arg(long, env = "BODY_READ_TIMEOUT_SECONDS", default_value = "30", value_parser = seconds)]
    pub body_read_timeout: Duration,
    /// Open connections from one client address that have not carried an authenticated
    /// request; zero: no limit.
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = 64)]
    pub max_connections_per_ip: usize,
}

/// Message rate limits and token budgets. Budgets are in tokens (prompt and answer) per
/// calendar day or month in UTC; unset means unlimited.
#[derive(Debug, Clone, Args)]
pub struct UsageLimits {
    /// Messages (turns) per minute of one user, the burst equal to it; zero: no limit.
    #[arg(long, env = "RATE_LIMIT_MESSAGES_PER_MINUTE", default_value_t = 30)]
    pub messages_per_minute: u32,
    /// Messages per minute of one client address in anonymous chat; zero: no limit.
    #[arg(
        long,
        env = "ANON_RATE_LIMIT_MESSAGES_PER_MINUTE",
        default_value_t = 10
    )]
    pub anon_messages_per_minute: u32,
    /// Tokens per day of users and managers without a budget of their role.
    #[arg(long, env = "TOKEN_BUDGET_DAILY")]
    pub daily: Option<u64>,
    /// Tokens per month of users and managers without a budget of their role.
    #[arg(long, env = "TOKEN_BUDGET_MONTHLY")]
    pub monthly: Option<u64>,
    /// Tokens per day of users.
    #[arg(long, env = "TOKEN_BUDGET_DAILY_USER")]
    pub daily_user: Option<u64>,
    /// Tokens per month of users.
    #[arg(long, env = "TOKEN_BUDGET_MONTHLY_USER")]
    pub monthly_user: Option<u64>,
    /// Tokens per day of managers.
    #[arg(long, env = "TOKEN_BUDGET_DAILY_MANAGER")]
    pub daily_manager: Option<u64>,
    /// Tokens per month of managers.
    #[arg(long, env = "TOKEN_BUDGET_MONTHLY_MANAGER")]
    pub monthly_manager: Option<u64>,
    /// Tokens per day of admins (unlimited unless set).
    #[arg(long, env = "TOKEN_BUDGET_DAILY_ADMIN")]
    pub daily_admin: Option<u64>,
    /// Tokens per month of admins (unlimited unless set).
    #[arg(long, env = "TOKEN_BUDGET_MONTHLY_ADMIN")]
    pub monthly_admin: Option<u64>,
}

/// All settings of the service.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address to bind.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port to bind.
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,
    /// `sqlite://path` (default) or `postgres://...`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/chat.db",
          hide_env_values = true, value_parser = database_url)]
    pub database_url: String,
    /// SQLite reader connections, beside the one writer (each has its own thread).
    #[arg(long, env = "SQLITE_MAX_CONNECTIONS", default_value_t = 4)]
    pub sqlite_max_connections: u32,
    /// SQLite `synchronous` pragma: `full` (default, nothing acknowledged is lost) or `normal`.
    #[arg(long, env = "SQLITE_SYNCHRONOUS", default_value = "full", ignore_case = true,
          value_parser = PossibleValuesParser::new(["full", "extra", "normal"])
              .map(|level| level.to_ascii_lowercase()))]
    pub sqlite_synchronous: String,
    /// Shared HS256 secret of the platform's auth server; `None` means a random key per run.
    #[arg(long, env = "AUTH_SECRET_KEY", hide_env_values = true)]
    pub auth_secret_key: Option<Secret>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// URL of the platform's auth server (informational).
    #[arg(long, env = "AUTH_SERVICE_URL")]
    pub auth_service_url: Option<String>,
    /// URL of the analytics service; `None` turns delivery off.
    #[arg(long, env = "ANALYTICS_SERVICE_URL",
          value_parser = |url: &str| Ok::<_, String>(url.trim_end_matches('/').to_owned()))]
    pub analytics_service_url: Option<String>,
    /// Capacity of the analytics queue; events beyond it are dropped and counted.
    #[arg(long, env = "ANALYTICS_QUEUE_CAPACITY", default_value_t = 10_000)]
    pub analytics_queue_capacity: usize,
    /// Allowed CORS origins; `["*"]` allows any.
    #[arg(long, env = "CORS_ORIGINS", default_value = "*", value_parser = list)]
    pub cors_origins: std::vec::Vec<String>,
    /// Salt of the public ID encoders; `None`: the salt kept in the database, generated on
    /// first start.
    #[arg(long, env = "HASHID_SALT")]
    pub hashid_salt: Option<String>,
    /// Whether `/ws/chat` accepts connections without a token.
    #[arg(long, env = "ALLOW_ANONYMOUS_WS", default_value_t = true, action = ArgAction::Set,
          value_parser = BoolishValueParser::new())]
    pub allow_anonymous_ws: bool,
    /// Proxies whose `X-Forwarded-For` / `X-Real-IP` headers are believed.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "", value_parser = addresses)]
    pub trusted_proxies: std::vec::Vec<IpAddr>,
    /// How long a user row is trusted without reading it again (0 turns the cache off).
    #[arg(long, env = "USER_CACHE_TTL_MS", default_value = "2000", value_parser = millis)]
    pub user_cache_ttl: Duration,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", default_value = "pretty", ignore_case = true)]
    pub log_format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `chat_service=debug`.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// LLM client settings.
    #[command(flatten)]
    pub llm: LlmSettings,
    /// Titles of new conversations.
    #[command(flatten)]
    pub titles: TitleSettings,
    /// Limits.
    #[command(flatten)]
    pub limits: Limits,
    /// Live chat across instances and reconnects.
    #[command(flatten)]
    pub live: LiveSettings,
    /// Tools from users' MCP servers.
    #[command(flatten)]
    pub mcp: McpConfig,
    /// Message rate limits and token budgets.
    #[command(flatten)]
    pub usage: UsageLimits,
}

/// The parser of the settings, fed `--name=value` arguments made from the variables.
#[derive(Parser)]
#[command(name = "chat-service")]
struct Environment {
    #[command(flatten)]
    settings: Settings,
}

/// A configuration value that could not be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid configuration: {name}: invalid value {}: {reason}",
    .value.as_ref().map_or("(not shown)".to_owned(), |value| format!("'{value}'"))
)]
pub struct ConfigError {
    /// Variable name.
    pub name: String,
    /// The offending value; `None` for a variable that may hold a secret.
    pub value: Option<String>,
    /// The form expected.
    pub reason: String,
}

impl Default for Settings {
    /// Settings with no environment at all: what `Settings::from_lookup(|_| None)` yields.
    fn default() -> Self {
        Self::from_lookup(|_| None).expect("defaults are valid")
    }
}

impl Settings {
    /// Loads `.env` (service) then `../.env` (platform; does not override) into the process
    /// environment, then reads the settings from it.
    pub fn load() -> Result<Self, ConfigError> {
        for file in [".env", "../.env"] {
            if Path::new(file).is_file() {
                let _ = dotenvy::from_filename(file);
            }
        }
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings from a map of variables; tests pass one.
    pub fn from_map(map: &std::collections::HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_lookup(|name| map.get(name).cloned())
    }

    /// Reads the settings from any name lookup; unset and empty values take defaults.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let command = Environment::command();
        let mut args = vec![OsString::from("chat-service")];
        for arg in command.get_arguments() {
            let (Some(name), Some(long)) = (arg.get_env(), arg.get_long()) else {
                continue;
            };
            let value = name.to_str().and_then(&lookup);
            if let Some(value) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
                args.push(format!("--{long}={value}").into());
            }
        }
        // Values come from `args` only: clap's own reading of the environment is taken off, so
        // that empty variables take defaults and the process's environment sways no lookup.
        let parser = command.clone().mut_args(|arg| arg.env(None::<&str>));
        let refused = |err: clap::Error| ConfigError::from_clap(&command, &err);
        let matches = parser.try_get_matches_from(args).map_err(refused)?;
        let environment = Environment::from_arg_matches(&matches).map_err(refused)?;
        Ok(environment.settings.settle())
    }

    /// The names of the environment variables the settings are read from.
    pub fn variables() -> Vec<String> {
        Environment::command()
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .map(|name| name.to_string_lossy().into_owned())
            .collect()
    }

    /// Whether the database is SQLite.
    pub fn is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }

    /// The rules that join variables: the default model is always allowed, and WebSocket
    /// origins default to the CORS origins.
    fn settle(mut self) -> Self {
        if !self.llm.allowed_models.contains(&self.llm.model) {
            self.llm.allowed_models.insert(0, self.llm.model.clone());
        }
        if self.limits.ws_allowed_origins.is_empty() {
            self.limits.ws_allowed_origins = self.cors_origins.clone();
        }
        self
    }
}

impl ConfigError {
    /// The variable that clap refused, its value and the form it expects.
    fn from_clap(command: &clap::Command, err: &clap::Error) -> Self {
        let context = |kind| match err.get(kind) {
            Some(ContextValue::String(text)) => Some(text.as_str()),
            _ => None,
        };
        // The argument shows as `--long <VALUE>`.
        let long = context(ContextKind::InvalidArg)
            .and_then(|shown| shown.strip_prefix("--")?.split([' ', '=']).next());
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_long().is_some_and(|l| Some(l) == long));
        let Some((arg, name)) = arg.and_then(|arg| Some((arg, arg.get_env()?))) else {
            return Self {
                name: "configuration".to_owned(),
                value: None,
                reason: err.kind().to_string(),
            };
        };
        let expected: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|value| !value.is_hide_set())
            .map(|value| value.get_name().to_owned())
            .collect();
        let source = std::error::Error::source(err);
        let reason = if !expected.is_empty() {
            format!("expected one of: {}", expected.join(", "))
        } else if source.is_some_and(|e| e.is::<ParseIntError>()) {
            "expected a whole number".to_owned()
        } else if source.is_some_and(|e| e.is::<ParseFloatError>()) {
            "expected a number".to_owned()
        } else {
            source.map_or_else(|| err.kind().to_string(), ToString::to_string)
        };
        Self {
            name: name.to_string_lossy().into_owned(),
            value: (!arg.is_hide_env_values_set()).then(|| {
                context(ContextKind::InvalidValue)
                    .unwrap_or_default()
                    .to_owned()
            }),
            reason,
        }
    }
}

/// Comma-separated items, trimmed, without empty ones.
fn list(text: &str) -> Result<Vec<String>, std::convert::Infallible> {
    Ok(text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Comma-separated IP addresses.
fn addresses(text: &str) -> Result<Vec<IpAddr>, &'static str> {
    let Ok(items) = list(text);
    items
        .iter()
        .map(|item| IpAddr::from_str(item).map_err(|_| "expected IP addresses"))
        .collect()
}

/// A whole number of seconds.
fn seconds(text: &str) -> Result<Duration, ParseIntError> {
    text.parse().map(Duration::from_secs)
}

/// A whole number of milliseconds.
fn millis(text: &str) -> Result<Duration, ParseIntError> {
    text.parse().map(Duration::from_millis)
}

/// A whole number no smaller than `min`.
fn at_least<T>(min: T) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: FromStr + PartialOrd + fmt::Display + Clone + Send + Sync + 'static,
{
    move |text| match text.parse() {
        Ok(value) if value >= min => Ok(value),
        _ => Err(format!("expected a whole number, at least {min}")),
    }
}

/// A sampling temperature, from 0 to 2 as OpenAI's API takes it.
fn temperature(text: &str) -> Result<f32, &'static str> {
    let expected = "expected a number from 0.0 to 2.0";
    let value: f32 = text.parse().map_err(|_| expected)?;
    (0.0..=2.0)
        .contains(&value)
        .then_some(value)
        .ok_or(expected)
}

/// A database the service has a backend for.
fn database_url(url: &str) -> Result<String, &'static str> {
    ["sqlite:", "postgres://", "postgresql://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
        .then(|| url.to_owned())
        .ok_or("expected a `sqlite:` or `postgres://` URL")
}

/// A Redis server's URL; may hold a password.
fn redis_url(url: &str) -> Result<Secret, &'static str> {
    url.starts_with("redis://")
        .then(|| Secret::new(url))
        .ok_or("expected a `redis://` URL")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_map(&map)
    }

    #[test]
    fn defaults_need_no_environment() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.port, 8000);
        assert_eq!(s.llm.provider, LlmProviderKind::Echo);
        assert!(s.auth_secret_key.is_none());
        assert!(s.allow_anonymous_ws);
        assert!(s.titles.auto_title);
        assert!(s.titles.title_model.is_none());
        let off = settings(&[("AUTO_TITLE", "false"), ("TITLE_MODEL", "small")]).unwrap();
        assert!(!off.titles.auto_title);
        assert_eq!(off.titles.title_model.as_deref(), Some("small"));
    }

    #[test]
    fn api_key_selects_openai_and_is_redacted() {
        let s = settings(&[("OPENAI_API_KEY", "sk-very-secret")]).unwrap();
        assert_eq!(s.llm.provider, LlmProviderKind::OpenAi);
        assert!(!format!("{s:?}").contains("sk-very-secret"));
    }

    #[test]
    fn bad_values_name_the_variable_and_the_form_expected() {
        for (name, value, message) in [
            (
                "PORT",
                "eighty",
                "PORT: invalid value 'eighty': expected a whole number",
            ),
            (
                "PORT",
                "70000",
                "PORT: invalid value '70000': 70000 is not in 0..=65535",
            ),
            (
                "ALLOW_ANONYMOUS_WS",
                "maybe",
                "ALLOW_ANONYMOUS_WS: invalid value 'maybe': expected one of: true, false",
            ),
            (
                "AUTO_TITLE",
                "sometimes",
                "AUTO_TITLE: invalid value 'sometimes': expected one of: true, false",
            ),
            (
                "LLM_PROVIDER",
                "claude",
                "LLM_PROVIDER: invalid value 'claude': expected one of: openai, echo",
            ),
            (
                "OPENAI_TEMPERATURE",
                "3",
                "OPENAI_TEMPERATURE: invalid value '3': expected a number from 0.0 to 2.0",
            ),
            (
                "TRUSTED_PROXIES",
                "10.0.0.1, proxy",
                "TRUSTED_PROXIES: invalid value '10.0.0.1, proxy': expected IP addresses",
            ),
            (
                "GENERATION_LEASE_SECONDS",
                "0",
                "GENERATION_LEASE_SECONDS: invalid value '0': expected a whole number, at least 1",
            ),
            (
                "DATABASE_URL",
                "mysql://root:hunter2@db",
                "DATABASE_URL: invalid value (not shown): expected a `sqlite:` or \
                 `postgres://` URL",
            ),
            (
                "REDIS_URL",
                "http://:hunter2@cache",
                "REDIS_URL: invalid value (not shown): expected a `redis://` URL",
            ),
        ] {
            let err = settings(&[(name, value)]).unwrap_err();
            assert_eq!(err.to_string(), format!("invalid configuration: {message}"));
        }
    }

    #[test]
    fn websocket_origins_default_to_the_cors_origins() {
        let s = settings(&[("CORS_ORIGINS", "https://a.example, https://b.example")]).unwrap();
        assert_eq!(s.limits.ws_allowed_origins, s.cors_origins);
        assert_eq!(s.cors_origins, ["https://a.example", "https://b.example"]);
        let s = settings(&[("OPENAI_ALLOWED_MODELS", "a,b"), ("OPENAI_MODEL", "m")]).unwrap();
        assert_eq!(s.llm.allowed_models, ["m", "a", "b"]);
    }

    /// `.env.example` lists every variable the settings read and no other (but those of its
    /// docker compose section), and README's configuration table names each.
    #[test]
    fn every_variable_is_documented() {
        let read = |file: &str| {
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap()
        };
        let (example, readme) = (read(".env.example"), read("README.md"));
        let service_part = example.split("# --- docker compose only").next().unwrap();
        let documented: Vec<&str> = service_part
            .lines()
            .filter_map(|line| line.trim_start_matches(['#', ' ']).split_once('='))
            .map(|(name, _)| name)
            .filter(|name| {
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
            })
            .collect();
        let variables = Settings::variables();
        let missing: Vec<&String> = variables
            .iter()
            .filter(|name| !documented.contains(&name.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            ".env.example does not document {missing:?}"
        );
        let unknown: Vec<&&str> = documented
            .iter()
            .filter(|name| !variables.iter().any(|v| v == *name))
            .collect();
        assert!(
            unknown.is_empty(),
            ".env.example documents unread {unknown:?}"
        );
        let unnamed: Vec<&String> = variables
            .iter()
            .filter(|name| !readme.contains(&format!("`{name}`")))
            .collect();
        assert!(unnamed.is_empty(), "README does not name {unnamed:?}");
    }
}
