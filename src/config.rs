//! Typed settings read once at start from the environment and `.env` files.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

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

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines for a terminal.
    Pretty,
    /// One JSON object per line for log collectors.
    Json,
}

/// Which LLM provider answers chat messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmProviderKind {
    /// Any OpenAI-compatible server through `async-openai`.
    OpenAi,
    /// The built-in offline provider that echoes the user's message.
    Echo,
}

/// The OpenAI API, where requests go when `OPENAI_BASE_URL` is not set.
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// Settings of the LLM client.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    /// The provider in use (`echo` when no API key is configured and none is chosen).
    pub provider: LlmProviderKind,
    /// Base URL of the OpenAI-compatible API, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// API key; `None` for servers that need none.
    pub api_key: Option<Secret>,
    /// Default model for new conversations.
    pub model: String,
    /// Models a conversation may choose; the default model is always allowed.
    pub allowed_models: Vec<String>,
    /// Sampling temperature.
    pub temperature: f32,
    /// Maximum tokens in one reply.
    pub max_tokens: u32,
    /// How long one LLM request may take up to its response headers and first token.
    pub timeout: Duration,
    /// How long a streaming reply may go without a chunk.
    pub stream_idle: Duration,
    /// How long one reply may stream in all.
    pub max_reply: Duration,
    /// Longest reply in characters: past it the service stops reading and keeps what it has.
    pub max_reply_chars: usize,
    /// Retries after the first attempt on 429, 5xx and connection errors.
    pub max_retries: u32,
    /// First backoff delay; doubled on every retry, with jitter.
    pub retry_base_delay: Duration,
    /// Token budget of the history sent with each request.
    pub context_token_budget: usize,
    /// Largest server-sent event of a reply, in bytes (`OPENAI_MAX_EVENT_BYTES`): past it the
    /// reply fails as unreadable.
    pub max_event_bytes: usize,
    /// Tool calls the model may ask for in one round (`MCP_MAX_TOOL_CALLS`): past it the round
    /// fails as unreadable.
    pub max_tool_calls: usize,
    /// Characters of tool-call arguments in one round, all calls together
    /// (`MCP_MAX_ARGUMENT_CHARS`): past it the round is cut and the reply kept truncated.
    pub max_argument_chars: usize,
}

/// Live chat across instances and reconnects.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// `redis://...` selects the Redis-backed hub; `None` keeps everything in this process.
    pub redis_url: Option<Secret>,
    /// Prefix of every Redis key and channel.
    pub redis_prefix: String,
    /// How long a generation's claim outlives an instance that stopped renewing it.
    pub generation_lease: Duration,
    /// How long a finished reply can still be resumed.
    pub resume_window: Duration,
}

/// Tools from users' MCP servers.
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// Rounds of tool calls in one reply at most.
    pub max_tool_rounds: usize,
    /// Bound of one call (and of one listing) of a server.
    pub timeout: Duration,
    /// Longest tool result given to the model, in characters.
    pub max_result_chars: usize,
    /// How long a server's tool list is reused.
    pub tools_cache: Duration,
    /// Hosts (or host:port) that receive the user's token.
    pub forward_user_token_hosts: Vec<String>,
    /// host:port allowed although they resolve to private addresses.
    pub allowed_hosts: Vec<String>,
}

/// Limits that protect the service.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted HTTP request body in bytes.
    pub max_body_bytes: usize,
    /// Largest accepted message content in characters.
    pub max_message_chars: usize,
    /// Largest accepted WebSocket frame in bytes.
    pub ws_max_frame_bytes: usize,
    /// Interval of server pings on idle WebSocket connections.
    pub ws_ping_interval: Duration,
    /// A WebSocket that sends nothing (not even a pong) for this long is closed.
    pub ws_idle_timeout: Duration,
    /// Concurrent generations one user may run.
    pub max_generations_per_user: usize,
    /// A WebSocket whose outgoing frames cannot be written for this long is closed.
    pub ws_send_timeout: Duration,
    /// Browser origins that may open WebSockets; empty: any.
    pub ws_allowed_origins: Vec<String>,
    /// Anonymous WebSocket connections from one client address, deployment-wide.
    pub anon_max_connections_per_ip: usize,
    /// Generations of all anonymous connections together, deployment-wide.
    pub anon_max_generations: usize,
    /// How long in-flight work may take to finish after a shutdown signal.
    pub shutdown_timeout: Duration,
}

/// All settings of the service.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to bind.
    pub host: String,
    /// Port to bind.
    pub port: u16,
    /// `sqlite://path` (default) or `postgres://...`.
    pub database_url: String,
    /// SQLite reader connections, beside the one writer (each has its own thread).
    pub sqlite_max_connections: u32,
    /// SQLite `synchronous` pragma: `full` (default, nothing acknowledged is lost) or `normal`.
    pub sqlite_synchronous: String,
    /// Shared HS256 secret of the platform's auth server; `None` means a random key per run.
    pub auth_secret_key: Option<Secret>,
    /// Required `iss` claim, when set.
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    pub jwt_audience: Option<String>,
    /// URL of the platform's auth server (informational).
    pub auth_service_url: Option<String>,
    /// URL of the analytics service; `None` turns delivery off.
    pub analytics_service_url: Option<String>,
    /// Capacity of the analytics queue; events beyond it are dropped and counted.
    pub analytics_queue_capacity: usize,
    /// Allowed CORS origins; `["*"]` allows any.
    pub cors_origins: Vec<String>,
    /// Salt of the public ID encoders; `None`: the salt kept in the database, generated on
    /// first start.
    pub hashid_salt: Option<String>,
    /// Whether `/ws/chat` accepts connections without a token.
    pub allow_anonymous_ws: bool,
    /// Proxies whose `X-Forwarded-For` / `X-Real-IP` headers are believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// How long a user row is trusted without reading it again (0 turns the cache off).
    pub user_cache_ttl: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `chat_service=debug`.
    pub log_level: String,
    /// LLM client settings.
    pub llm: LlmSettings,
    /// Limits.
    pub limits: Limits,
    /// Live chat across instances and reconnects.
    pub live: LiveSettings,
    /// Tools from users' MCP servers.
    pub mcp: McpConfig,
}

/// A configuration value that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {name}={value:?}: {reason}")]
pub struct ConfigError {
    /// Variable name.
    pub name: String,
    /// The offending value.
    pub value: String,
    /// Why it was refused.
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

    /// Reads the settings from a name lookup; tests pass a map.
    pub fn from_map(map: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_lookup(|name| map.get(name).cloned())
    }

    /// Reads the settings from any name lookup; unset and empty values take defaults.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let api_key = env.string("OPENAI_API_KEY").map(Secret::new);
        let provider = match env.string("LLM_PROVIDER").as_deref() {
            None if api_key.is_some() => LlmProviderKind::OpenAi,
            None => LlmProviderKind::Echo,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "openai" => LlmProviderKind::OpenAi,
                "echo" => LlmProviderKind::Echo,
                _ => return Err(env.invalid("LLM_PROVIDER", v, "expected `openai` or `echo`")),
            },
        };
        let model = env
            .string("OPENAI_MODEL")
            .unwrap_or_else(|| "gpt-4o-mini".to_owned());
        let mut allowed_models = env.list("OPENAI_ALLOWED_MODELS");
        if !allowed_models.contains(&model) {
            allowed_models.insert(0, model.clone());
        }
        let llm = LlmSettings {
            provider,
            base_url: env
                .string("OPENAI_BASE_URL")
                .unwrap_or_else(|| DEFAULT_OPENAI_BASE_URL.to_owned()),
            api_key,
            model,
            allowed_models,
            temperature: env.parse("OPENAI_TEMPERATURE", 0.7)?,
            max_tokens: env.parse("OPENAI_MAX_TOKENS", 1024)?,
            timeout: Duration::from_secs(env.parse("OPENAI_TIMEOUT_SECONDS", 60)?),
            stream_idle: Duration::from_secs(env.parse("OPENAI_STREAM_IDLE_SECONDS", 30)?),
            max_reply: Duration::from_secs(env.parse("OPENAI_MAX_REPLY_SECONDS", 600)?),
            max_reply_chars: env.parse("LLM_MAX_REPLY_CHARS", 100_000)?,
            max_retries: env.parse("OPENAI_MAX_RETRIES", 3)?,
            retry_base_delay: Duration::from_millis(env.parse("OPENAI_RETRY_BASE_MS", 500)?),
            context_token_budget: env.parse("CONTEXT_TOKEN_BUDGET", 6000)?,
            max_event_bytes: env.parse("OPENAI_MAX_EVENT_BYTES", 1024 * 1024)?,
            max_tool_calls: env.parse("MCP_MAX_TOOL_CALLS", 16)?,
            max_argument_chars: env.parse("MCP_MAX_ARGUMENT_CHARS", 100_000)?,
        };
        if !(0.0..=2.0).contains(&llm.temperature) {
            return Err(env.invalid(
                "OPENAI_TEMPERATURE",
                &llm.temperature.to_string(),
                "expected 0.0 to 2.0",
            ));
        }
        let limits = Limits {
            max_body_bytes: env.parse("MAX_BODY_BYTES", 1024 * 1024)?,
            max_message_chars: env.parse("MAX_MESSAGE_CHARS", 32_000)?,
            ws_max_frame_bytes: env.parse("WS_MAX_FRAME_BYTES", 256 * 1024)?,
            ws_ping_interval: Duration::from_secs(env.parse("WS_PING_INTERVAL_SECONDS", 30)?),
            ws_idle_timeout: Duration::from_secs(env.parse("WS_IDLE_TIMEOUT_SECONDS", 90)?),
            max_generations_per_user: env.parse("MAX_GENERATIONS_PER_USER", 3)?,
            ws_send_timeout: Duration::from_secs(env.parse("WS_SEND_TIMEOUT_SECONDS", 10)?),
            ws_allowed_origins: {
                let origins = env.list("WS_ALLOWED_ORIGINS");
                if origins.is_empty() {
                    env.list("CORS_ORIGINS")
                } else {
                    origins
                }
            },
            anon_max_connections_per_ip: env.parse("ANON_MAX_CONNECTIONS_PER_IP", 5)?,
            anon_max_generations: env.parse("ANON_MAX_GENERATIONS", 4)?,
            shutdown_timeout: Duration::from_secs(env.parse("SHUTDOWN_TIMEOUT_SECONDS", 10)?),
        };
        let log_format = match env.string("LOG_FORMAT").as_deref() {
            None | Some("pretty") | Some("human") | Some("text") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(v) => return Err(env.invalid("LOG_FORMAT", v, "expected `json` or `pretty`")),
        };
        let trusted_proxies = env
            .list("TRUSTED_PROXIES")
            .into_iter()
            .map(|ip| {
                IpAddr::from_str(&ip)
                    .map_err(|_| env.invalid("TRUSTED_PROXIES", &ip, "expected IP addresses"))
            })
            .collect::<Result<_, _>>()?;
        let sqlite_synchronous = env
            .string("SQLITE_SYNCHRONOUS")
            .unwrap_or_else(|| "full".to_owned())
            .to_ascii_lowercase();
        if !["full", "normal", "extra"].contains(&sqlite_synchronous.as_str()) {
            return Err(env.invalid(
                "SQLITE_SYNCHRONOUS",
                &sqlite_synchronous,
                "expected `full`, `extra` or `normal`",
            ));
        }
        let database_url = env
            .string("DATABASE_URL")
            .unwrap_or_else(|| "sqlite://data/chat.db".to_owned());
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(env.invalid(
                "DATABASE_URL",
                "(hidden)",
                "expected a `sqlite:` or `postgres://` URL",
            ));
        }
        let settings = Self {
            host: env.string("HOST").unwrap_or_else(|| "0.0.0.0".to_owned()),
            port: env.parse("PORT", 8000)?,
            database_url,
            sqlite_max_connections: env.parse("SQLITE_MAX_CONNECTIONS", 4)?,
            sqlite_synchronous,
            auth_secret_key: env.string("AUTH_SECRET_KEY").map(Secret::new),
            jwt_issuer: env.string("JWT_ISSUER"),
            jwt_audience: env.string("JWT_AUDIENCE"),
            auth_service_url: env.string("AUTH_SERVICE_URL"),
            analytics_service_url: env
                .string("ANALYTICS_SERVICE_URL")
                .map(|u| u.trim_end_matches('/').to_owned()),
            analytics_queue_capacity: env.parse("ANALYTICS_QUEUE_CAPACITY", 10_000)?,
            cors_origins: {
                let origins = env.list("CORS_ORIGINS");
                if origins.is_empty() {
                    vec!["*".to_owned()]
                } else {
                    origins
                }
            },
            hashid_salt: env.string("HASHID_SALT"),
            allow_anonymous_ws: env.parse_bool("ALLOW_ANONYMOUS_WS", true)?,
            trusted_proxies,
            user_cache_ttl: Duration::from_millis(env.parse("USER_CACHE_TTL_MS", 2000)?),
            log_format,
            log_level: env.string("LOG_LEVEL").unwrap_or_else(|| "info".to_owned()),
            llm,
            limits,
            mcp: McpConfig {
                max_tool_rounds: env.parse("MCP_MAX_TOOL_ROUNDS", 4)?,
                timeout: Duration::from_secs(env.parse("MCP_TIMEOUT_SECONDS", 20)?),
                max_result_chars: env.parse("MCP_MAX_RESULT_CHARS", 20_000)?,
                tools_cache: Duration::from_secs(env.parse("MCP_TOOLS_CACHE_SECONDS", 60)?),
                forward_user_token_hosts: env.list("MCP_FORWARD_USER_TOKEN_HOSTS"),
                allowed_hosts: env.list("MCP_ALLOWED_HOSTS"),
            },
            live: LiveSettings {
                redis_url: env.string("REDIS_URL").map(Secret::new),
                redis_prefix: env
                    .string("REDIS_PREFIX")
                    .unwrap_or_else(|| "chat-service".to_owned()),
                generation_lease: Duration::from_secs(env.parse("GENERATION_LEASE_SECONDS", 30)?),
                resume_window: Duration::from_secs(env.parse("RESUME_WINDOW_SECONDS", 300)?),
            },
        };
        if settings.live.generation_lease.is_zero() {
            return Err(env.invalid("GENERATION_LEASE_SECONDS", "0", "must be at least 1"));
        }
        if let Some(url) = &settings.live.redis_url {
            let url = url.expose();
            if !url.starts_with("redis://") {
                return Err(env.invalid("REDIS_URL", "(hidden)", "expected a `redis://` URL"));
            }
        }
        if settings.limits.max_body_bytes < 1024 {
            return Err(env.invalid(
                "MAX_BODY_BYTES",
                &settings.limits.max_body_bytes.to_string(),
                "must be at least 1024",
            ));
        }
        Ok(settings)
    }

    /// Whether the database is SQLite.
    pub fn is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }
}

/// Typed reads over a name lookup.
struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    fn string(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn list(&self, name: &str) -> Vec<String> {
        self.string(name)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn parse<T: FromStr>(&self, name: &str, default: T) -> Result<T, ConfigError> {
        match self.string(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| self.invalid(name, &v, "not a valid number")),
        }
    }

    fn parse_bool(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.string(name).map(|v| v.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(true),
            Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(false),
            Some(v) => Err(self.invalid(name, &v, "expected true or false")),
        }
    }

    fn invalid(&self, name: &str, value: &str, reason: &str) -> ConfigError {
        ConfigError {
            name: name.to_owned(),
            value: value.to_owned(),
            reason: reason.to_owned(),
        }
    }
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
    }

    #[test]
    fn api_key_selects_openai_and_is_redacted() {
        let s = settings(&[("OPENAI_API_KEY", "sk-very-secret")]).unwrap();
        assert_eq!(s.llm.provider, LlmProviderKind::OpenAi);
        assert!(!format!("{s:?}").contains("sk-very-secret"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = settings(&[("PORT", "eighty")]).unwrap_err();
        assert!(err.to_string().contains("PORT"));
        assert!(settings(&[("ALLOW_ANONYMOUS_WS", "maybe")]).is_err());
        assert!(settings(&[("DATABASE_URL", "mysql://x")]).is_err());
        assert!(settings(&[("TRUSTED_PROXIES", "not-an-ip")]).is_err());
    }
}
