//! Building the state and the router, and serving until a shutdown signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{HeaderName, HeaderValue, Method, Request};
use axum::response::IntoResponse;
use axum::Router;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::util::MapRequestLayer;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_redoc::{Redoc, Servable};
use utoipa_swagger_ui::SwaggerUi;

use crate::analytics::{Analytics, AnalyticsLayer};
use crate::chat::hub::{Hub, HubBackend, LocalHub, RedisSettings};
use crate::chat::llm::build_provider;
use crate::client_ip::client_ip;
use crate::config::{Secret, Settings};
use crate::connections::{serve_connections, ConnectionLimits};
use crate::db::health::HealthProbe;
use crate::db::postgres::PostgresStore;
use crate::db::sqlite::SqliteStore;
use crate::db::Store;
use crate::error::ApiError;
use crate::ids::{IdCodec, LEGACY_SALT};
use crate::jwt::{random_secret, JwtKeys};
use crate::limits::{Counters, LocalCounters, RedisCounters};
use crate::mcp::{McpSettings, McpTools};
use crate::metrics;
use crate::openapi::ApiDoc;
use crate::routes;
use crate::service::recovery::Recovery;
use crate::state::{AppState, Services};
use crate::user_cache::UserCache;

/// Opens the database and builds the shared state. Without a configured secret a random one
/// is generated into the settings (the caller tells the operator).
pub async fn build_state(settings: Settings) -> anyhow::Result<AppState> {
    Ok(AppState::new(build_services(settings).await?))
}

/// The parts of the shared state, for callers that replace one before serving (tests).
pub async fn build_services(mut settings: Settings) -> anyhow::Result<Services> {
    let secret = settings
        .auth_secret_key
        .get_or_insert_with(|| Secret::new(random_secret()))
        .clone();
    let url = settings.database_url.as_str();
    let store: Arc<dyn Store> = if settings.is_sqlite() {
        Arc::new(
            SqliteStore::connect(
                url,
                &settings.sqlite_synchronous,
                settings.sqlite_max_connections,
            )
            .await
            .context("could not open the SQLite database")?,
        )
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Arc::new(
            PostgresStore::connect(url)
                .await
                .context("could not connect to the PostgreSQL database")?,
        )
    } else {
        anyhow::bail!("DATABASE_URL: expected a `sqlite:` or `postgres://` URL")
    };
    let jwt = Arc::new(JwtKeys::from_settings(&settings, secret.expose()));
    let ids = Arc::new(IdCodec::new(&hashid_salt(&settings, store.as_ref()).await?));
    // Before the analytics handle, which keeps a gauge of the installed recorder.
    metrics::install();
    let analytics = Analytics::from_settings(&settings, ids.clone(), jwt.clone())?;
    if !analytics.is_enabled() {
        tracing::info!("ANALYTICS_SERVICE_URL is not set: analytics delivery is off");
    }
    let users = Arc::new(UserCache::new(settings.user_cache_ttl));
    let hub = build_hub(&settings, users.clone()).await?;
    let shutdown = CancellationToken::new();
    let recovery = Recovery::new(
        store.clone(),
        hub.clone(),
        analytics.clone(),
        settings.live.generation_lease,
    );
    recover_replies(recovery, shutdown.clone()).await;
    let limits: Arc<dyn Counters> = match hub.redis_link() {
        Some(link) => Arc::new(RedisCounters::new(link)),
        None => Arc::new(LocalCounters::default()),
    };
    Ok(Services {
        limits,
        jwt,
        ids,
        store,
        llm: build_provider(&settings.llm).context("could not set up the LLM client")?,
        hub,
        users,
        mcp: McpTools::new(McpSettings::from(&settings.mcp)),
        health: Arc::new(HealthProbe::default()),
        analytics,
        shutdown,
        settings: Arc::new(settings),
    })
}

/// The salt of the public IDs: `HASHID_SALT` when set, otherwise the one kept in the
/// database (a random one stored on first start).
async fn hashid_salt(settings: &Settings, store: &dyn Store) -> anyhow::Result<String> {
    if let Some(salt) = &settings.hashid_salt {
        return Ok(salt.clone());
    }
    // 128 random bits. Short on purpose: hashids shuffle the alphabet with at most its
    // length (62) of salt characters, and each kind's salt is this one plus `:<kind>`, which a
    // longer salt would push out of reach (every kind would encode alike).
    let fresh = random_secret()[..32].to_owned();
    let salt = store
        .hashid_salt(&fresh, LEGACY_SALT)
        .await
        .context("could not read the salt of the public IDs from the database")?;
    if salt == LEGACY_SALT {
        tracing::warn!(
            "public IDs use the salt that every install shared before salts were generated, \
             so anyone can decode them; setting HASHID_SALT fixes that but changes every \
             public ID"
        );
    }
    Ok(salt)
}

/// The in-process hub, or the Redis-backed one when `REDIS_URL` is set.
async fn build_hub(settings: &Settings, users: Arc<UserCache>) -> anyhow::Result<Hub> {
    let live = &settings.live;
    let local = LocalHub::new(live.resume_window, users);
    let Some(url) = &live.redis_url else {
        return Ok(Hub::local(local));
    };
    let redis = RedisSettings {
        url: url.expose().to_owned(),
        prefix: live.redis_prefix.clone(),
        lease: live.generation_lease,
        resume_window: live.resume_window,
    };
    Ok(Hub::redis(redis, local).await?)
}

/// Finishes the replies that stopped instances left unfinished: on one instance, those found
/// at start; with Redis, from a task that sweeps until shutdown.
async fn recover_replies(recovery: Recovery, shutdown: CancellationToken) {
    match recovery.hub().backend() {
        HubBackend::Local => match recovery.finish_all_left().await {
            Ok(0) => {}
            Ok(count) => tracing::warn!(
                count,
                "replies cut short by the last stop were stored partial, marked incomplete"
            ),
            Err(err) => {
                tracing::error!(error = %err, "could not finish the replies left unfinished")
            }
        },
        HubBackend::Redis { .. } => {
            tokio::spawn(recovery.sweep_until(shutdown));
        }
    }
}

/// The OpenAPI-documented routes and the document built from them.
pub fn api_routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let v1 = OpenApiRouter::new()
        .merge(routes::health::api_router())
        .merge(routes::users::router())
        .merge(routes::conversations::router())
        .merge(routes::messages::router())
        .merge(routes::chat::router())
        .merge(routes::admin::router())
        .merge(routes::mcp_servers::router())
        .merge(routes::api_keys::router())
        .merge(routes::usage::router())
        .merge(routes::search::router());
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(routes::health::root_router())
        .merge(routes::openai::router())
        .nest("/api/v1", v1)
        .split_for_parts()
}

/// The whole application: routes, docs and middleware.
///
/// Middleware that needs the matched route (tracing, analytics) is applied per route here;
/// axum clones it for every request, so it holds only cheap handles. The rest wraps the
/// router once, in [`serve`].
pub fn router(state: AppState) -> Router {
    let (api, mut document) = api_routes();
    crate::openapi::configure(&mut document, &state.settings);
    let settings = state.settings.clone();
    let trusted: Arc<[std::net::IpAddr]> = settings.trusted_proxies.clone().into();
    api.merge(crate::ws::router())
        .merge(routes::page::router())
        .merge(SwaggerUi::new("/docs").url("/openapi.json", document.clone()))
        .merge(Redoc::with_url("/redoc", document).custom_html(REDOC_HTML))
        .route(
            "/redoc/redoc.standalone.js",
            axum::routing::get(redoc_script),
        )
        .route("/metrics", axum::routing::get(metrics::endpoint))
        .fallback(|| async { ApiError::NotFound("Not Found".to_owned()) })
        .method_not_allowed_fallback(|| async {
            (
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(crate::error::ErrorBody {
                    detail: "Method Not Allowed".to_owned(),
                }),
            )
                .into_response()
        })
        .layer(DefaultBodyLimit::max(settings.limits.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            settings.limits.body_read_timeout,
            crate::connections::body_deadline::limit_body_time,
        ))
        .layer(AnalyticsLayer::new(state.analytics.clone()))
        .layer(
            // Field values are computed only when the span is enabled.
            TraceLayer::new_for_http().make_span_with(move |request: &Request<_>| {
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    route = request
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or("unmatched", MatchedPath::as_str),
                    request_id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or(""),
                    client = %client_ip(request, &trusted)
                        .map(|ip| ip.to_string())
                        .unwrap_or_default(),
                )
            }),
        )
        .with_state(state)
}

/// ReDoc's page, loading the bundled script instead of a CDN's so the docs work offline.
const REDOC_HTML: &str = include_str!("../assets/redoc/index.html");
const REDOC_JS: &[u8] = include_bytes!("../assets/redoc/redoc.standalone.js");

async fn redoc_script() -> impl IntoResponse {
    (
        [
            (axum::http::header::CONTENT_TYPE, "application/javascript"),
            (axum::http::header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        REDOC_JS,
    )
}

fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .expose_headers([
            HeaderName::from_static("x-total-count"),
            HeaderName::from_static(routes::openai::CONVERSATION_HEADER),
        ]);
    if origins.iter().any(|o| o == "*") {
        // Answers do not vary by origin when every origin is allowed: no `Vary` to build.
        layer
            .allow_origin(Any)
            .allow_headers(Any)
            .vary(Vec::<HeaderName>::new())
    } else {
        let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
        layer
            .allow_origin(AllowOrigin::list(origins))
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CONTENT_TYPE,
            ])
            .allow_credentials(true)
    }
}

/// Serves until `shutdown` completes, then, within the configured timeout: lets in-flight
/// requests and replies finish (those still running near the end are interrupted and stored
/// as far as they got), sends the hub's last events to the other instances, and flushes the
/// analytics queue. Connections are bounded as [`crate::connections`] says.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = state.shutdown.clone();
    let settings = state.settings.clone();
    let timeout = settings.limits.shutdown_timeout;
    let hub = state.hub.clone();
    let analytics = state.analytics.clone();
    let request_id = HeaderName::from_static("x-request-id");
    let app = ServiceBuilder::new()
        .layer(MapRequestLayer::new(trim_trailing_slash))
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(cors(&settings.cors_origins))
        .service(router(state));
    let limits = ConnectionLimits {
        header_read_timeout: Some(settings.limits.header_read_timeout).filter(|t| !t.is_zero()),
        max_per_address: settings.limits.max_connections_per_ip,
        exempt: settings.trusted_proxies.clone(),
    };
    let signal = {
        let token = token.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                () = token.cancelled() => {}
            }
            tracing::info!("shutting down");
            token.cancel();
        }
    };
    tokio::spawn(signal);
    let server = serve_connections(listener, app, limits, token.clone());
    tokio::pin!(server);
    // Connections are served until the signal cancels the token; checked first, it tells a
    // shutdown from a server that ended on its own.
    let ended = tokio::select! {
        biased;
        () = token.cancelled() => false,
        () = &mut server => true,
    };
    let deadline = Instant::now() + timeout;
    // Requests in flight, then the replies still being generated (whose clients may have
    // gone), are stored before the process exits.
    let drained = async {
        if !ended {
            server.await;
        }
        hub.tasks.close();
        hub.tasks.wait().await;
    };
    tokio::select! {
        () = drained => {}
        () = interrupt_replies(&hub, deadline - stored_within(timeout)) => unreachable!(),
        () = tokio::time::sleep_until(deadline) => {
            tracing::warn!("in-flight requests or replies did not finish in time");
        }
    };
    // The ends of the replies just stored go to the other instances, then the analytics
    // events that the requests and replies recorded.
    if !hub.flush(deadline).await {
        tracing::warn!("live events for other instances were still queued at the deadline");
    }
    analytics
        .shutdown(deadline.saturating_duration_since(Instant::now()))
        .await;
    Ok(())
}

/// The time kept at the end of the shutdown timeout to store the replies still running,
/// publish their end and free their conversations: a quarter of it, at most 3 s.
fn stored_within(timeout: Duration) -> Duration {
    (timeout / 4).min(Duration::from_secs(3))
}

/// Interrupts the replies still running at `at`: each stops and is stored as far as it got.
/// Never resolves, so that it can wait beside the shutdown's other steps.
async fn interrupt_replies(hub: &Hub, at: Instant) {
    tokio::time::sleep_until(at).await;
    if !hub.tasks.is_empty() {
        tracing::warn!(
            replies = hub.tasks.len(),
            "replies still running are interrupted and stored incomplete"
        );
    }
    hub.interrupt.cancel();
    std::future::pending::<()>().await;
}

/// Trims trailing slashes before routing, so `/users/` and `/users` are one route. The
/// Swagger UI's own `/docs/` is left alone: it redirects `/docs` there.
fn trim_trailing_slash(mut request: axum::extract::Request) -> axum::extract::Request {
    let path = request.uri().path();
    if path.len() > 1 && path.ends_with('/') && path != "/docs/" {
        let trimmed = path.trim_end_matches('/');
        let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
        let path_and_query = match request.uri().query() {
            Some(query) => format!("{trimmed}?{query}"),
            None => trimmed.to_owned(),
        };
        let mut parts = request.uri().clone().into_parts();
        if let Ok(value) = path_and_query.parse() {
            parts.path_and_query = Some(value);
            if let Ok(uri) = axum::http::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
    request
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// Runs the service from settings: binds, tells the operator how to authenticate when the
/// key was generated, and serves until SIGINT or SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let generated_key = settings.auth_secret_key.is_none();
    let address = format!("{}:{}", settings.host, settings.port);
    let state = build_state(settings).await?;
    let listener = TcpListener::bind(&address)
        .await
        .with_context(|| format!("could not bind {address}"))?;
    if generated_key {
        tracing::warn!(
            "AUTH_SECRET_KEY is not set: a random key was generated for this run; \
             tokens from the platform's auth server will be refused"
        );
        let token = state.jwt.mint(
            "admin",
            &["admin".to_owned()],
            Duration::from_secs(24 * 3600),
            None,
        );
        // Printed, not logged: a token must never reach the logs.
        let link = routes::page::signed_in_link(listener.local_addr()?, &token);
        println!("\nAdmin token for this run (valid 24 h, user `admin`):\n\n{token}\n");
        println!("Chat page, signed in as `admin`:\n\n{link}\n");
    }
    tracing::info!(address = %listener.local_addr()?, "listening");
    serve(listener, state, shutdown_signal()).await?;
    Ok(())
}
