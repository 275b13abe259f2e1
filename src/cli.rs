//! The command line: serve (default), mint a token, or check a running instance's health.

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::jwt::JwtKeys;

/// Command line of the service.
#[derive(Debug, Parser)]
#[command(
    name = "chat-service",
    version,
    about = "Chat backend with streaming LLM replies"
)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Serve,
    /// Print a JWT signed with the configured AUTH_SECRET_KEY.
    Token {
        /// Username (`sub` claim).
        #[arg(long)]
        sub: String,
        /// Comma-separated roles, e.g. `admin,user`.
        #[arg(long, value_delimiter = ',', default_value = "user")]
        roles: Vec<String>,
        /// Lifetime, e.g. `1h`, `30m`, `7d`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Email claim.
        #[arg(long)]
        email: Option<String>,
    },
    /// Exit 0 when the local instance's `/health` answers 200 (for container health checks).
    Healthcheck {
        /// URL to check; defaults to this instance's `/health` on loopback.
        #[arg(long)]
        url: Option<String>,
    },
    /// Print the names of the environment variables the configuration reads, one a line
    /// (for checks that they are all documented).
    #[command(hide = true)]
    ConfigVars,
}

/// Signs a token with the configured key; refuses when no key is configured, since a token
/// signed with a random key would be useless.
pub fn mint_token(
    settings: &Settings,
    sub: &str,
    roles: &[String],
    ttl: Duration,
    email: Option<&str>,
) -> anyhow::Result<String> {
    let secret = settings.auth_secret_key.as_ref().ok_or_else(|| {
        anyhow::anyhow!("AUTH_SECRET_KEY is not set; set it (environment or .env) to mint tokens")
    })?;
    let roles: Vec<String> = roles
        .iter()
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .collect();
    Ok(JwtKeys::from_settings(settings, secret.expose()).mint(sub, &roles, ttl, email))
}

/// GETs the health URL; `Ok` only on a 200.
pub async fn healthcheck(settings: &Settings, url: Option<String>) -> anyhow::Result<()> {
    let url = url.unwrap_or_else(|| format!("http://127.0.0.1:{}/health", settings.port));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let status = client.get(&url).send().await?.status();
    anyhow::ensure!(status.is_success(), "{url} answered {status}");
    Ok(())
}
