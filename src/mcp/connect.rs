//! Reaching a server: the HTTP clients (built once), which bearer token a server gets, and
//! opening an MCP session over rmcp's Streamable HTTP transport.
//!
//! A session is opened per list or call (`initialize`, `notifications/initialized`, then the
//! request) and closed in the background afterwards; the HTTP connections under it are pooled
//! by the shared clients.

use std::{fmt, sync::Arc};

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
    guard::{self, Authority, Guard, GuardedResolver, HostLookup, Route},
    response_bound::{BoundedHttp, ResponseBound},
    McpEndpoint, McpSettings,
};

/// An open MCP session with one server.
pub(crate) type Session = RunningService<RoleClient, ClientConfig>;

/// Redirects followed per request (same origin, 307 and 308 only).
const MAX_REDIRECTS: usize = 5;

/// Where and how to reach one server for one user.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    /// The server's URL.
    pub url: Url,
    /// The bearer token sent to it, if any.
    pub bearer: Option<String>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url.as_str())
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Opens sessions with MCP servers.
pub(crate) struct Connector {
    guard: Arc<Guard>,
    /// Reaches checked address literals, and host names at the addresses the guard keeps.
    guarded: reqwest13::Client,
    /// Reaches the hosts in `allowed_hosts`, whatever their address.
    allowed: reqwest13::Client,
    forward_user_token_hosts: Vec<String>,
    client_info: ClientConfig,
}

impl Connector {
    /// Builds the HTTP clients once for the life of the service; they resolve names with
    /// `lookup`.
    pub(crate) fn new(settings: &McpSettings, lookup: Arc<dyn HostLookup>) -> Self {
        let guard = Arc::new(Guard::new(&settings.allowed_hosts, lookup));
        Self {
            guarded: http_client(GuardedResolver::new(Arc::clone(&guard), Route::Guarded)),
            allowed: http_client(GuardedResolver::new(Arc::clone(&guard), Route::Allowed)),
            guard,
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

    /// Checks the target's address and opens a session (the `initialize` handshake) whose
    /// answers are counted against `bound`.
    pub(crate) async fn open(
        &self,
        target: &Target,
        bound: ResponseBound,
    ) -> Result<Session, McpError> {
        let (client, _pin) = match (self.guard.check(&target.url)?, target.url.host()) {
            (Route::Guarded, Some(url::Host::Domain(name))) => {
                (self.guarded.clone(), Some(self.guard.pin(name).await?))
            }
            (Route::Guarded, _) => (self.guarded.clone(), None),
            (Route::Allowed, _) => (self.allowed.clone(), None),
        };
        let mut config = StreamableHttpClientTransportConfig::with_uri(target.url.as_str());
        if let Some(bearer) = &target.bearer {
            config = config.auth_header(bearer.clone());
        }
        let transport =
            StreamableHttpClientTransport::with_client(BoundedHttp::new(client, bound), config);
        self.client_info
            .clone()
            .serve(transport)
            .await
            .map_err(|error| McpError::Connect(Box::new(error)))
    }
}

/// One HTTP client: rustls with the webpki roots (as the rest of the service), no proxy (a
/// proxy would resolve the host where the guard cannot see it), same-origin redirects only.
fn http_client(resolver: GuardedResolver) -> reqwest13::Client {
    reqwest13::Client::builder()
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
        ))
        .dns_resolver(resolver)
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

#[cfg(test)]
mod tests {
    use std::future::IntoFuture;

    use axum::{
        response::{IntoResponse, Redirect},
        routing::get,
        Router,
    };
    use futures::FutureExt;

    use super::*;
    use crate::mcp::guard::{GuardError, SystemLookup};

    fn client(route: Route) -> reqwest13::Client {
        let guard = Guard::new(&[], Arc::new(SystemLookup));
        http_client(GuardedResolver::new(Arc::new(guard), route))
    }

    fn endpoint(url: &str, api_key: Option<&str>) -> McpEndpoint {
        McpEndpoint {
            id: 1,
            name: "server".to_owned(),
            url: url.to_owned(),
            api_key: api_key.map(str::to_owned),
        }
    }

    #[test]
    fn the_user_token_goes_only_to_listed_hosts() {
        let connector = Connector::new(
            &McpSettings {
                forward_user_token_hosts: vec![
                    "Trusted.example".to_owned(),
                    "ports.example:8443".to_owned(),
                ],
                ..McpSettings::default()
            },
            Arc::new(SystemLookup),
        );
        let bearer = |url: &str, key: Option<&str>| {
            connector
                .target(&endpoint(url, key), Some("jwt"))
                .unwrap()
                .bearer
        };
        assert_eq!(
            bearer("https://trusted.example/mcp", Some("key")).as_deref(),
            Some("jwt")
        );
        assert_eq!(
            bearer("http://trusted.example:9000/mcp", None).as_deref(),
            Some("jwt")
        );
        assert_eq!(
            bearer("https://ports.example:8443/", None).as_deref(),
            Some("jwt")
        );
        assert_eq!(
            bearer("https://ports.example/", Some("key")).as_deref(),
            Some("key")
        );
        assert_eq!(bearer("https://other.example/", Some(" ")), None);
        assert_eq!(bearer("https://other.example/", None), None);
    }

    #[tokio::test]
    async fn the_guarded_client_does_not_connect_to_a_name_that_resolves_to_loopback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();

        let error = client(Route::Guarded)
            .get(format!("http://localhost:{port}/"))
            .send()
            .await
            .expect_err("localhost must be refused");

        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        let mut refused = false;
        while let Some(error) = cause {
            refused |= error.downcast_ref::<GuardError>() == Some(&GuardError::Restricted);
            cause = error.source();
        }
        assert!(refused, "{error:?}");
        assert!(
            listener.accept().now_or_never().is_none(),
            "nothing connected"
        );
    }

    #[tokio::test]
    async fn only_same_origin_redirects_that_keep_the_method_are_followed() {
        let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let elsewhere_url = format!("http://{}/target", elsewhere.local_addr().unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/target", get(|| async { "arrived" }))
            .route("/same", get(|| async { Redirect::temporary("/target") }))
            .route("/see-other", get(|| async { Redirect::to("/target") }))
            .route(
                "/away",
                get(move || async move { Redirect::temporary(&elsewhere_url).into_response() }),
            );
        tokio::spawn(axum::serve(listener, app).into_future());
        let client = client(Route::Allowed);
        let status = |path: &'static str| {
            // A redirect followed elsewhere would wait on a server that never answers.
            let request = client
                .get(format!("{base}{path}"))
                .timeout(std::time::Duration::from_secs(10));
            async move { request.send().await.unwrap().status().as_u16() }
        };

        assert_eq!(status("/same").await, 200);
        assert_eq!(status("/see-other").await, 303);
        assert_eq!(status("/away").await, 307);
        assert!(
            elsewhere.accept().now_or_never().is_none(),
            "nothing went elsewhere"
        );
    }
}
