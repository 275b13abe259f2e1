//! One keep-alive HTTP/1.1 connection to the analytics service that pipelines requests: a
//! batch is written at once and the answers are read back in order (RFC 9112, section 9.3.2).
//!
//! Each event stays one request with the original path and body, but a batch costs the
//! service and the receiver one write and a few reads instead of a round trip per event.
//! Responses are parsed with `httparse`; bodies are skipped (by length, chunked, or up to
//! the close).

use std::io::Write;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use reqwest::Url;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::event::Outgoing;

/// Why an exchange stopped before every request was answered.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Reading or writing failed, or the service closed the connection early.
    #[error("the connection to the analytics service was lost")]
    Lost(#[source] std::io::Error),
    /// The service's answer is not HTTP/1.1 this client understands.
    #[error("the analytics service sent a malformed response: {0}")]
    Malformed(&'static str),
}

/// Where the service is and how requests name it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host name or address to connect to, without brackets.
    host: String,
    port: u16,
    /// The `Host` header: host, and the port when it is not the scheme's default.
    authority: String,
}

impl Endpoint {
    /// The endpoint of a plain `http` URL; `None` for any other scheme or a URL without host.
    pub fn from_url(url: &Url) -> Option<Self> {
        if url.scheme() != "http" {
            return None;
        }
        let host = match url.host()? {
            url::Host::Domain(domain) => domain.to_owned(),
            url::Host::Ipv4(ip) => ip.to_string(),
            url::Host::Ipv6(ip) => ip.to_string(),
        };
        let port = url.port_or_known_default()?;
        let authority = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str()?),
            None => url.host_str()?.to_owned(),
        };
        Some(Self {
            host,
            port,
            authority,
        })
    }

    /// Opens a connection (name resolution included).
    pub async fn connect(&self) -> std::io::Result<Connection> {
        let stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
        // A batch leaves at once, not held by Nagle's algorithm until the last one is acknowledged.
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            incoming: BytesMut::with_capacity(8 * 1024),
            closed: false,
        })
    }

    /// Appends one request to `out`, with `token` as its bearer credential if given.
    pub fn encode(&self, out: &mut Vec<u8>, request: &Outgoing, token: Option<&str>) {
        let body = request.body.as_deref().unwrap_or_default();
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {USER_AGENT}\r\nContent-Length: {}\r\n",
            request.method,
            request.target,
            self.authority,
            body.len()
        );
        if request.body.is_some() {
            out.extend_from_slice(b"Content-Type: application/json\r\n");
        }
        if let Some(token) = token {
            let _ = write!(out, "Authorization: Bearer {token}\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
    }
}

/// Largest answer read: an analytics service answers with a few bytes, and a runaway one
/// must not make the service buffer without bound.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// The `User-Agent` of every request to the analytics service.
pub const USER_AGENT: &str = concat!("chat-service/", env!("CARGO_PKG_VERSION"));

/// An open connection; see the module documentation.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    incoming: BytesMut,
    /// The service has closed its side.
    closed: bool,
}

/// How long a read waits for answers before the ACK that is due is sent: far below a
/// delayed ACK (40 ms on Linux), far above a healthy answer on a LAN.
const ACK_PROBE: Duration = Duration::from_millis(2);

/// How an exchange ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Every request was answered and the connection may carry the next batch.
    Reusable,
    /// The service closed the connection (`Connection: close` or end of stream) after the
    /// answers so far; the requests after them were not processed and may be sent again.
    Closed,
}

impl Connection {
    /// Writes `count` encoded requests and reads their answers' status codes into
    /// `statuses`, in order. On an error `statuses` holds the answers read before it.
    pub async fn exchange(
        &mut self,
        requests: &[u8],
        count: usize,
        statuses: &mut Vec<u16>,
    ) -> Result<After, ExchangeError> {
        self.stream
            .write_all(requests)
            .await
            .map_err(ExchangeError::Lost)?;
        for _ in 0..count {
            let answer = loop {
                if let Some(answer) = take_response(&mut self.incoming, self.closed)? {
                    break answer;
                }
                if self.incoming.len() > MAX_RESPONSE_BYTES {
                    return Err(ExchangeError::Malformed("response too large"));
                }
                if self.closed {
                    if self.incoming.is_empty() {
                        return Ok(After::Closed);
                    }
                    return Err(ExchangeError::Lost(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    ));
                }
                let read = self.read_more().await.map_err(ExchangeError::Lost)?;
                self.closed = read == 0;
            };
            statuses.push(answer.status);
            if !answer.keep_alive {
                return Ok(After::Closed);
            }
        }
        Ok(After::Reusable)
    }
}

impl Connection {
    /// Reads what has arrived into `incoming`.
    ///
    /// Delayed ACKs stay on: a service that answers each pipelined request in its own
    /// segment would otherwise get an ACK packet per answer, work for both sides. But a
    /// service that leaves Nagle's algorithm on holds its answers after the first until
    /// that one is acknowledged, about 40 ms with a delayed ACK; so a read that waits
    /// longer than [`ACK_PROBE`] sends the ACK that is due, and the held answers follow.
    async fn read_more(&mut self) -> std::io::Result<usize> {
        // Reading into a buffer is cancel-safe: nothing is lost when the probe ends it.
        let read = self.stream.read_buf(&mut self.incoming);
        if let Ok(read) = tokio::time::timeout(ACK_PROBE, read).await {
            return read;
        }
        self.acknowledge_now();
        self.stream.read_buf(&mut self.incoming).await
    }

    /// Sends the ACK that is due, if any, without waiting for the delayed-ACK timer.
    fn acknowledge_now(&self) {
        #[cfg(target_os = "linux")]
        let _ = self.stream.set_quickack(true);
    }
}

/// The parts of a response that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answer {
    status: u16,
    keep_alive: bool,
}

/// How a response's body ends.
enum Framing {
    Length(usize),
    Chunked,
    /// Up to the end of the stream.
    Close,
}

/// Takes the first complete response off `buffer`, or `None` when more bytes are needed.
/// `closed` says the stream has ended (which completes a body framed by the close).
fn take_response(buffer: &mut BytesMut, closed: bool) -> Result<Option<Answer>, ExchangeError> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(buffer) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => {
                return Err(ExchangeError::Malformed(
                    "unreadable status line or headers",
                ))
            }
        };
        let status = response.code.unwrap_or_default();
        let version_keeps_alive = response.version == Some(1);
        let mut keep_alive = version_keeps_alive;
        let mut length = None;
        let mut chunked = false;
        for header in response.headers.iter() {
            let value = std::str::from_utf8(header.value).unwrap_or_default().trim();
            if header.name.eq_ignore_ascii_case("content-length") {
                let parsed: usize = value
                    .parse()
                    .map_err(|_| ExchangeError::Malformed("invalid Content-Length"))?;
                if parsed > MAX_RESPONSE_BYTES {
                    return Err(ExchangeError::Malformed("response too large"));
                }
                length = Some(parsed);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().ends_with("chunked");
            } else if header.name.eq_ignore_ascii_case("connection") {
                let value = value.to_ascii_lowercase();
                if value.split(',').any(|token| token.trim() == "close") {
                    keep_alive = false;
                } else if value.split(',').any(|token| token.trim() == "keep-alive") {
                    keep_alive = true;
                }
            }
        }
        // Chunked wins over a length (RFC 9112, 6.3); without either, the body ends with
        // the stream.
        let mut framing = match (chunked, length) {
            (true, _) => Framing::Chunked,
            (false, Some(length)) => Framing::Length(length),
            (false, None) => Framing::Close,
        };
        if (100..200).contains(&status) {
            // An interim answer (100 Continue and the like): the final one follows.
            buffer.advance(head_len);
            continue;
        }
        if status == 204 || status == 304 {
            framing = Framing::Length(0);
        }
        let body_len = match framing {
            Framing::Length(length) => (buffer.len() - head_len >= length).then_some(length),
            Framing::Chunked => chunked_length(&buffer[head_len..])?,
            Framing::Close if closed => Some(buffer.len() - head_len),
            Framing::Close => None,
        };
        let Some(body_len) = body_len else {
            return Ok(None);
        };
        buffer.advance(head_len + body_len);
        let keep_alive = keep_alive && !matches!(framing, Framing::Close);
        return Ok(Some(Answer { status, keep_alive }));
    }
}

/// The length of a complete chunked body at the start of `bytes`, trailers included, or
/// `None` when it is not complete yet.
fn chunked_length(bytes: &[u8]) -> Result<Option<usize>, ExchangeError> {
    let mut at = 0;
    loop {
        let (size_len, size) = match httparse::parse_chunk_size(&bytes[at..]) {
            Ok(httparse::Status::Complete(parsed)) => parsed,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(ExchangeError::Malformed("invalid chunk size")),
        };
        at += size_len;
        if size == 0 {
            // Trailer lines, then an empty line.
            loop {
                let Some(end) = bytes[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                at += end + 2;
                if end == 0 {
                    return Ok(Some(at));
                }
            }
        }
        let size = usize::try_from(size).map_err(|_| ExchangeError::Malformed("huge chunk"))?;
        let end = at.saturating_add(size).saturating_add(2);
        if bytes.len() < end {
            return Ok(None);
        }
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(bytes: &[u8], closed: bool) -> (Result<Option<Answer>, String>, usize) {
        let mut buffer = BytesMut::from(bytes);
        let result = take_response(&mut buffer, closed).map_err(|e| e.to_string());
        (result, buffer.len())
    }

    const OK: Answer = Answer {
        status: 200,
        keep_alive: true,
    };

    #[test]
    fn a_response_with_a_length_is_taken_whole_and_the_next_one_is_left() {
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 500 Oops\r\n";
        let (answer, left) = take(two, false);
        assert_eq!(answer, Ok(Some(OK)));
        assert_eq!(left, b"HTTP/1.1 500 Oops\r\n".len());
    }

    #[test]
    fn partial_heads_and_bodies_wait_for_more_bytes() {
        assert_eq!(take(b"HTTP/1.1 200 OK\r\nContent-Le", false).0, Ok(None));
        assert_eq!(
            take(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", false).0,
            Ok(None)
        );
        assert_eq!(
            take(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
                false
            )
            .0,
            Ok(None)
        );
    }

    #[test]
    fn chunked_bodies_with_trailers_are_skipped() {
        let response = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n\
                         2\r\nab\r\n3;ext=1\r\ncde\r\n0\r\nX-Trailer: 1\r\n\r\nnext";
        let (answer, left) = take(response, false);
        assert_eq!(
            answer,
            Ok(Some(Answer {
                status: 201,
                keep_alive: true
            }))
        );
        assert_eq!(left, 4);
    }

    #[test]
    fn interim_answers_are_skipped_and_no_content_has_no_body() {
        let response = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let (answer, left) = take(response, false);
        assert_eq!(
            answer,
            Ok(Some(Answer {
                status: 204,
                keep_alive: true
            }))
        );
        assert_eq!(left, 0);
    }

    #[test]
    fn close_ends_reuse_and_a_body_without_length_ends_with_the_stream() {
        let close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            take(close, false).0,
            Ok(Some(Answer {
                status: 200,
                keep_alive: false
            }))
        );
        let unframed = b"HTTP/1.1 200 OK\r\n\r\nall of it";
        assert_eq!(take(unframed, false).0, Ok(None));
        assert_eq!(
            take(unframed, true),
            (
                Ok(Some(Answer {
                    status: 200,
                    keep_alive: false
                })),
                0
            )
        );
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            take(old, false).0,
            Ok(Some(Answer {
                status: 200,
                keep_alive: false
            }))
        );
    }

    #[test]
    fn chunked_wins_over_a_length_and_huge_answers_are_refused() {
        let both = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n\
                     0\r\n\r\n";
        assert_eq!(take(both, false), (Ok(Some(OK)), 0));
        let huge = b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n";
        assert!(take(huge, false).0.is_err());
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(take(b"SSH-2.0-OpenSSH\r\n\r\n", false).0.is_err());
        assert!(take(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false)
            .0
            .is_err());
    }

    #[test]
    fn requests_carry_the_path_query_host_length_and_token() {
        let url = Url::parse("http://analytics:8001/base/").expect("url");
        let endpoint = Endpoint::from_url(&url).expect("endpoint");
        let mut out = Vec::new();
        let request = Outgoing {
            method: reqwest::Method::POST,
            target: "/base/track?a=b%20c".to_owned(),
            body: Some(bytes::Bytes::from_static(b"{\"k\":1}")),
            needs_token: false,
        };
        endpoint.encode(&mut out, &request, Some("t0k"));
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with("POST /base/track?a=b%20c HTTP/1.1\r\nHost: analytics:8001\r\n"));
        assert!(text.contains("Content-Length: 7\r\n"));
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.ends_with("Authorization: Bearer t0k\r\n\r\n{\"k\":1}"));
        assert!(Endpoint::from_url(&Url::parse("https://a/").expect("url")).is_none());
        let ipv6 = Endpoint::from_url(&Url::parse("http://[::1]/").expect("url")).expect("v6");
        assert_eq!((ipv6.host.as_str(), ipv6.port), ("::1", 80));
        assert_eq!(ipv6.authority, "[::1]");
    }

    /// A service with Nagle's algorithm on (the default of most servers) that writes each
    /// answer on its own, as HTTP servers do with pipelined requests.
    async fn nagle_service() -> Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = Url::parse(&format!("http://{}/", listener.local_addr().expect("addr")));
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut received = Vec::new();
            let mut chunk = [0; 4096];
            loop {
                let Ok(read @ 1..) = socket.read(&mut chunk).await else {
                    return;
                };
                received.extend_from_slice(&chunk[..read]);
                while let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                    received.drain(..end + 4);
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                    if socket.write_all(answer).await.is_err() {
                        return;
                    }
                }
            }
        });
        url.expect("url")
    }

    #[tokio::test]
    async fn answers_held_by_nagles_algorithm_are_not_left_waiting_for_a_delayed_ack() {
        let url = nagle_service().await;
        let endpoint = Endpoint::from_url(&url).expect("endpoint");
        let mut connection = endpoint.connect().await.expect("connect");
        let request = Outgoing {
            method: reqwest::Method::GET,
            target: "/".to_owned(),
            body: None,
            needs_token: false,
        };
        let mut batch = Vec::new();
        for _ in 0..8 {
            endpoint.encode(&mut batch, &request, None);
        }
        async fn exchange(connection: &mut Connection, batch: &[u8]) {
            let mut statuses = Vec::new();
            let after = connection.exchange(batch, 8, &mut statuses).await;
            assert!(matches!(after, Ok(After::Reusable)), "{after:?}");
            assert_eq!(statuses, [200; 8]);
        }
        // A new connection acknowledges at once for a while anyway; then delayed ACKs start.
        for _ in 0..5 {
            exchange(&mut connection, &batch).await;
        }
        // Waiting for the delayed ACK would take at least 40 ms per batch, 400 ms in all;
        // the probe sends it after 2 ms.
        let started = std::time::Instant::now();
        for _ in 0..10 {
            exchange(&mut connection, &batch).await;
        }
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_millis(200), "{elapsed:?}");
    }
}
