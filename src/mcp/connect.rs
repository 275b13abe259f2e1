//! Reaching a server: the HTTP clients (built once), which bearer token a server gets, and
//! opening an MCP session over rmcp's Streamable HTTP transport.
//!
//! A session is opened per list or call (`initialize`, `notifications/initialized`, then the
//! request) and closed in the background afterwards; the HTTP connections under it are pooled
//! by the shared clients.

use std::sync::Arc;

use rmcp::{
    model::{ClientCapabilities, ClientConfig, Implementation},
    service::{RoleClient, RunningService},
    transport::{
        streamable_http_client::StreamableHttpClientTransportConfig, StreamableHttpClientTransport,
    },
    ServiceExt,
};
use url::Url;

use super::{
    error::McpError,
    guard::{self, Authority, GuardedResolver, Route},
    McpEndpoint, McpSettings,
};

/// An open MCP session with one server.
pub(crate) type Session = RunningService<RoleClient, ClientConfig>;

/// Redirects followed per request (same origin, 307 and 308 only).
const MAX_REDIRECTS: usize = 5;

/// Where and how to reach one server for one user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    /// The server's URL.
    pub url: Url,
    /// The bearer token sent to it, if any.
    pub bearer: Option<String>,
}

/// Opens sessions with MCP servers.
pub(crate) struct Connector {
    /// Reaches host names through [`GuardedResolver`] and checked address literals.
    guarded: reqwest13::Client,
    /// Reaches the hosts in `allowed_hosts`, whatever their address.
    allowed: reqwest13::Client,
    allowed_hosts: Vec<String>,
    forward_user_token_hosts: Vec<String>,
    client_info: ClientConfig,
}

impl Connector {
    /// Builds the HTTP clients once for the life of the service.
    pub(crate) fn new(settings: &McpSettings) -> Self {
        Self {
            guarded: http_client(Some(GuardedResolver)),
            allowed: http_client(None),
            allowed_hosts: guard::normalise_hosts(&settings.allowed_hosts),
            forward_user_token_hosts: guard::normalise_hosts(&settings.forward_user_token_hosts),
            client_info: ClientConfig::new(
                ClientCapabilities::default(),
                Implementation::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION")),
            ),
        }
    }

    /// The URL of a server and the token it gets: the user's token only for the hosts listed
    /// in `forward_user_token_hosts`, otherwise the server's own API key, otherwise none.
    pub(crate) fn target(
        &self,
        server: &McpEndpoint,
        user_token: Option<&str>,
    ) -> Result<Target, McpError> {
        let url = Url::parse(server.url.trim()).map_err(|_| guard::GuardError::BadUrl)?;
        let authority = Authority::of(&url)?;
        let forwarded = user_token.filter(|_| authority.is_listed(&self.forward_user_token_hosts));
        let bearer = forwarded
            .or(server.api_key.as_deref())
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .map(str::to_owned);
        Ok(Target { url, bearer })
    }

    /// Checks the target's address and opens a session (the `initialize` handshake).
    pub(crate) async fn open(&self, target: &Target) -> Result<Session, McpError> {
        let client = match guard::check(&target.url, &self.allowed_hosts).await? {
            Route::Guarded => self.guarded.clone(),
            Route::Allowed => self.allowed.clone(),
        };
        let mut config = StreamableHttpClientTransportConfig::with_uri(target.url.as_str());
        if let Some(bearer) = &target.bearer {
            config = config.auth_header(bearer.clone());
        }
        let transport = StreamableHttpClientTransport::with_client(client, config);
        self.client_info
            .clone()
            .serve(transport)
            .await
            .map_err(|error| McpError::Connect(Box::new(error)))
    }
}

/// One HTTP client: rustls with the webpki roots (as the rest of the service), no proxy (a
/// proxy would resolve the host where the guard cannot see it), same-origin redirects only.
fn http_client(resolver: Option<GuardedResolver>) -> reqwest13::Client {
    let mut builder = reqwest13::Client::builder()
        .tls_backend_preconfigured(tls_config())
        .no_proxy()
        .redirect(reqwest13::redirect::Policy::custom(|attempt| {
            let same_origin = attempt
                .previous()
                .last()
                .is_some_and(|previous| previous.origin() == attempt.url().origin());
            let keeps_method = matches!(attempt.status().as_u16(), 307 | 308);
            if same_origin && keeps_method && attempt.previous().len() <= MAX_REDIRECTS {
                attempt.follow()
            } else {
                attempt.stop()
            }
        }))
        .user_agent(concat!(
            env!("CARGO_PKG_NAME"),
            "/",
            env!("CARGO_PKG_VERSION")
        ));
    if let Some(resolver) = resolver {
        builder = builder.dns_resolver(resolver);
    }
    builder
        .build()
        .expect("a fixed HTTP client configuration always builds")
}

fn tls_config() -> rustls::ClientConfig {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}
