//! Serving HTTP connections: hyper's HTTP/1 server under the router, with the bounds that keep
//! slow or hoarding clients from holding the service (slowloris).
//!
//! - A client has `header_read_timeout` to send a request's headers, on a new connection and
//!   between the requests of a kept-alive one; past it the connection is closed (hyper has
//!   nothing to answer yet).
//! - Each client address may hold `max_per_address` connections that have not yet carried an
//!   authenticated request ([`per_address`]); further ones are closed as soon as they are
//!   accepted. Proxies in `exempt` (`TRUSTED_PROXIES`) are not counted: they speak for many.
//! - A request's body has a deadline of its own ([`body_deadline`]), answered with 408.
//!
//! On shutdown the listener stops accepting, idle connections close, requests in flight
//! finish (hyper's graceful shutdown), and [`serve_connections`] returns when every
//! connection is gone. Upgraded connections (WebSockets) are no longer HTTP connections:
//! their sessions close themselves on the same signal.

pub mod body_deadline;
pub mod per_address;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use per_address::PerAddress;
pub use per_address::{mark_authenticated, ConnectionSlot};

/// The bounds of [`serve_connections`].
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Time to send a request's headers; `None`: no limit.
    pub header_read_timeout: Option<Duration>,
    /// Connections without an authenticated request per client address; 0: no limit.
    pub max_per_address: usize,
    /// Peers that are not counted (the reverse proxies in front of the service).
    pub exempt: Vec<IpAddr>,
}

/// Accepts connections on `listener` and serves each with `app` until `shutdown` is
/// cancelled; then lets them finish as the module documentation says.
pub async fn serve_connections<S>(
    listener: TcpListener,
    app: S,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) where
    S: Service<axum::extract::Request, Response = Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let http = Arc::new(http);
    let app = App::new(app);
    let per_address = Arc::new(PerAddress::new(limits.max_per_address));
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error, &shutdown).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let peer_ip = peer.ip().to_canonical();
        let slot = if limits.exempt.contains(&peer_ip) {
            ConnectionSlot::uncounted()
        } else {
            match per_address.admit(peer_ip) {
                Some(slot) => slot,
                None => {
                    tracing::debug!(%peer_ip, "connection refused: too many from this address");
                    crate::metrics::connection_refused();
                    continue;
                }
            }
        };
        connections.spawn(serve_one(
            stream,
            peer,
            slot,
            app.clone(),
            Arc::clone(&http),
            shutdown.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// The application every connection serves.
type App = BoxCloneSyncService<axum::extract::Request, Response, Infallible>;

/// Serves one connection until it closes, or shuts it down gracefully on `shutdown`.
async fn serve_one(
    stream: TcpStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
    app: App,
    http: Arc<hyper::server::conn::http1::Builder>,
    shutdown: CancellationToken,
) {
    // Streamed chunks are small writes: without TCP_NODELAY, Nagle's algorithm and the peer's
    // delayed ACKs hold them back for tens of milliseconds.
    let _ = stream.set_nodelay(true);
    let service = app.map_request(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(slot.clone());
        request
    });
    let connection = http
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // Timeouts, resets and malformed requests: the client's doing, not worth more.
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// Waits after an accept error that is not one connection's (such as running out of file
/// descriptors), so the loop does not spin; a connection's own error is skipped at once.
async fn accept_failed(error: std::io::Error, shutdown: &CancellationToken) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "could not accept a connection; retrying in a second");
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
        () = shutdown.cancelled() => {}
    }
}
