//! Connections to the analytics service: hyper's HTTP/1.1 client connection over TCP, or
//! over TLS for `https` URLs, and one request-answer exchange on such a connection.
//!
//! Each connection carries one request at a time and is kept alive for the next; the worker
//! keeps a pool of them (see [`super::worker`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use url::Url;

use super::event::Outgoing;

/// The `User-Agent` of every request to the analytics service.
pub const USER_AGENT: &str = concat!("chat-service/", env!("CARGO_PKG_VERSION"));

/// Largest answer read: an analytics service answers with a few bytes, and a runaway one
/// must not make the service read without bound.
pub const MAX_RESPONSE_BYTES: u64 = 1024 * 1024;

/// The sending half of an open connection.
pub type Connection = SendRequest<Full<Bytes>>;

/// Why the service's endpoint cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Not an `http` or `https` URL with a host.
    #[error("not an http(s) URL with a host")]
    Unsupported,
    /// The TLS client could not be set up.
    #[error("could not set up TLS")]
    Tls(#[source] rustls::Error),
}

/// Why one exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The connection was closed before the service answered: an idle connection the
    /// service closed in the meantime, or one it closed after its last answer.
    #[error("the connection was closed before an answer: {0}")]
    Closed(#[source] hyper::Error),
    /// The connection broke.
    #[error("the connection broke: {0}")]
    Lost(#[source] hyper::Error),
    /// The answer is not HTTP/1.1 this client reads.
    #[error("malformed response: {0}")]
    Malformed(#[source] hyper::Error),
    /// The answer is longer than [`MAX_RESPONSE_BYTES`].
    #[error("response too large")]
    TooLarge,
    /// The request could not be built: its target is not a valid path and query.
    #[error("invalid request")]
    InvalidRequest,
}

/// Where the service is, and how to open a connection to it.
pub struct Endpoint {
    /// Host name or address to connect to, without brackets.
    host: String,
    port: u16,
    /// The `Host` header: host, and the port when it is not the scheme's default.
    authority: HeaderValue,
    /// TLS for `https`.
    tls: Option<Tls>,
}

struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl Endpoint {
    /// The endpoint of an `http` or `https` URL. `https` trusts the bundled web PKI roots
    /// and the system's certificate store.
    pub fn from_url(url: &Url) -> Result<Self, EndpointError> {
        let host = match url.host().ok_or(EndpointError::Unsupported)? {
            url::Host::Domain(domain) => domain.to_owned(),
            url::Host::Ipv4(ip) => ip.to_string(),
            url::Host::Ipv6(ip) => ip.to_string(),
        };
        let port = url
            .port_or_known_default()
            .ok_or(EndpointError::Unsupported)?;
        let host_str = url.host_str().ok_or(EndpointError::Unsupported)?;
        let authority = match url.port() {
            Some(port) => format!("{host_str}:{port}"),
            None => host_str.to_owned(),
        };
        let authority = HeaderValue::try_from(authority).map_err(|_| EndpointError::Unsupported)?;
        let tls = match url.scheme() {
            "http" => None,
            "https" => Some(Tls {
                connector: TlsConnector::from(Arc::new(tls_config()?)),
                name: ServerName::try_from(host.clone()).map_err(|_| EndpointError::Unsupported)?,
            }),
            _ => return Err(EndpointError::Unsupported),
        };
        Ok(Self {
            host,
            port,
            authority,
            tls,
        })
    }

    /// Opens a connection (name resolution and the TLS handshake included) within `limit`;
    /// its I/O runs on a task of its own until it closes.
    pub async fn connect(&self, limit: Duration) -> std::io::Result<Connection> {
        tokio::time::timeout(limit, self.open())
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }

    async fn open(&self) -> std::io::Result<Connection> {
        let stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
        // A request leaves at once, not held by Nagle's algorithm.
        stream.set_nodelay(true)?;
        match &self.tls {
            None => handshake(stream).await,
            Some(tls) => handshake(tls.connector.connect(tls.name.clone(), stream).await?).await,
        }
    }

    /// Sends one request on `connection` and reads its answer whole; returns its status.
    /// `token` is the request's bearer credential, if it needs one.
    pub async fn exchange(
        &self,
        connection: &mut Connection,
        request: &Outgoing,
        token: Option<&str>,
    ) -> Result<StatusCode, ExchangeError> {
        let request = self.request(request, token)?;
        connection.ready().await.map_err(ExchangeError::Closed)?;
        let response = connection.send_request(request).await.map_err(|err| {
            if err.is_canceled() || err.is_incomplete_message() {
                ExchangeError::Closed(err)
            } else {
                classify(err)
            }
        })?;
        let status = response.status();
        let mut body = response.into_body();
        if body.size_hint().lower() > MAX_RESPONSE_BYTES {
            return Err(ExchangeError::TooLarge);
        }
        // Read to the end, so the connection can carry the next request.
        let mut read = 0;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame.map_err(classify)?.data_ref() {
                read += data.len() as u64;
                if read > MAX_RESPONSE_BYTES {
                    return Err(ExchangeError::TooLarge);
                }
            }
        }
        Ok(status)
    }

    fn request(
        &self,
        outgoing: &Outgoing,
        token: Option<&str>,
    ) -> Result<Request<Full<Bytes>>, ExchangeError> {
        let target =
            Uri::try_from(outgoing.target.as_str()).map_err(|_| ExchangeError::InvalidRequest)?;
        let body = outgoing.body.clone().unwrap_or_default();
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = outgoing.method.clone();
        *request.uri_mut() = target;
        let headers = request.headers_mut();
        headers.insert(HOST, self.authority.clone());
        headers.insert(
            hyper::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        );
        if outgoing.body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(token) = token {
            let value = HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| ExchangeError::InvalidRequest)?;
            headers.insert(AUTHORIZATION, value);
        }
        Ok(request)
    }
}

/// Starts hyper's HTTP/1.1 client on an open stream.
async fn handshake<T>(stream: T) -> std::io::Result<Connection>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "analytics connection closed");
        }
    });
    Ok(sender)
}

/// What a hyper error during an exchange means.
fn classify(err: hyper::Error) -> ExchangeError {
    if err.is_parse_too_large() {
        ExchangeError::TooLarge
    } else if err.is_parse() || err.is_parse_status() {
        ExchangeError::Malformed(err)
    } else {
        ExchangeError::Lost(err)
    }
}

/// TLS 1.2 and 1.3 with the bundled web PKI roots and the system's own.
fn tls_config() -> Result<ClientConfig, EndpointError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // Certificates the system store holds that rustls cannot read are skipped.
    let (_added, _skipped) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(EndpointError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).expect("url")
    }

    fn get(target: &str) -> Outgoing {
        Outgoing {
            method: hyper::Method::GET,
            target: target.to_owned(),
            body: None,
            needs_token: false,
        }
    }

    /// A service that answers each request by its path: `/big-length` announces 2 MiB,
    /// `/big-chunked` sends 1.5 MiB in chunks, anything else a short chunked answer.
    async fn service() -> Url {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = url(&format!("http://{}/", listener.local_addr().expect("addr")));
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut received = Vec::new();
                    let mut chunk = [0; 4096];
                    while let Ok(read @ 1..) = socket.read(&mut chunk).await {
                        received.extend_from_slice(&chunk[..read]);
                        while let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&received[..end]).into_owned();
                            received.drain(..end + 4);
                            let answer = if head.starts_with("GET /big-length ") {
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2097152\r\n\r\n".to_vec()
                            } else if head.starts_with("GET /big-chunked ") {
                                let mut answer =
                                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                        .to_vec();
                                for _ in 0..24 {
                                    answer.extend_from_slice(b"10000\r\n");
                                    answer.extend_from_slice(&[b'x'; 0x10000]);
                                    answer.extend_from_slice(b"\r\n");
                                }
                                answer.extend_from_slice(b"0\r\n\r\n");
                                answer
                            } else {
                                b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n\
                                  2\r\nok\r\n0\r\n\r\n"
                                    .to_vec()
                            };
                            if socket.write_all(&answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        base
    }

    #[tokio::test]
    async fn answers_are_read_whole_and_those_over_a_mebibyte_are_refused() {
        let endpoint = Endpoint::from_url(&service().await).expect("endpoint");
        let limit = Duration::from_secs(5);
        let mut connection = endpoint.connect(limit).await.expect("connect");
        for _ in 0..3 {
            let status = endpoint
                .exchange(&mut connection, &get("/small"), None)
                .await;
            assert_eq!(status.expect("answer"), StatusCode::CREATED);
        }
        for big in ["/big-length", "/big-chunked"] {
            let mut connection = endpoint.connect(limit).await.expect("connect");
            let refused = endpoint.exchange(&mut connection, &get(big), None).await;
            assert!(
                matches!(refused, Err(ExchangeError::TooLarge)),
                "{big}: {refused:?}"
            );
        }
    }

    #[tokio::test]
    async fn https_urls_speak_tls() {
        // A plain HTTP service behind an https URL: the TLS handshake fails.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let https = url(&format!(
            "https://{}/",
            listener.local_addr().expect("addr")
        ));
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let _ = socket
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
        });
        let endpoint = Endpoint::from_url(&https).expect("endpoint");
        assert!(endpoint.tls.is_some());
        let refused = endpoint.connect(Duration::from_secs(5)).await.map(|_| ());
        let kind = refused.expect_err("not TLS").kind();
        assert_ne!(kind, std::io::ErrorKind::TimedOut);
        let default_port = Endpoint::from_url(&url("https://analytics.example/")).expect("url");
        assert_eq!(default_port.port, 443);
    }

    #[test]
    fn requests_name_the_host_and_carry_the_body_type_and_token() {
        let endpoint = Endpoint::from_url(&url("http://[::1]:8001/base/")).expect("endpoint");
        assert_eq!((endpoint.host.as_str(), endpoint.port), ("::1", 8001));
        let post = Outgoing {
            method: hyper::Method::POST,
            target: "/base/track?a=b%20c".to_owned(),
            body: Some(Bytes::from_static(b"{}")),
            needs_token: true,
        };
        let request = endpoint.request(&post, Some("t0k")).expect("request");
        assert_eq!(request.uri(), "/base/track?a=b%20c");
        let headers = request.headers();
        assert_eq!(headers[HOST], "[::1]:8001");
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        assert_eq!(headers[AUTHORIZATION], "Bearer t0k");
        let plain = Endpoint::from_url(&url("http://analytics/")).expect("endpoint");
        assert_eq!(
            plain.request(&get("/"), None).expect("request").headers()[HOST],
            "analytics"
        );
        assert!(matches!(
            Endpoint::from_url(&url("ftp://analytics/")),
            Err(EndpointError::Unsupported)
        ));
    }
}
