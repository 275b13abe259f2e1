//! The chat page at `/chat`: static HTML, CSS and JavaScript embedded in the binary, served
//! with a strict Content-Security-Policy. The page speaks the public REST and WebSocket API;
//! it is not part of the OpenAPI document, which describes only the API.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

/// Path of the page.
pub const PAGE_PATH: &str = "/chat";

/// One embedded file and how to serve it.
struct StaticFile {
    content_type: &'static str,
    body: &'static [u8],
    /// A hash of the body, for the `ETag`: a new build with other content gets a new tag.
    hash: u64,
}

impl StaticFile {
    const fn new(content_type: &'static str, body: &'static [u8]) -> Self {
        Self {
            content_type,
            body,
            hash: fnv1a(body),
        }
    }
}

/// FNV-1a, computed at compile time over the embedded files.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// The page and its assets, by path.
const FILES: &[(&str, StaticFile)] = &[
    (
        PAGE_PATH,
        StaticFile::new(HTML, include_bytes!("../../assets/chat/index.html")),
    ),
    (
        "/chat/chat.css",
        StaticFile::new(
            "text/css; charset=utf-8",
            include_bytes!("../../assets/chat/chat.css"),
        ),
    ),
    (
        "/chat/app.js",
        StaticFile::new(JS, include_bytes!("../../assets/chat/app.js")),
    ),
    (
        "/chat/api.js",
        StaticFile::new(JS, include_bytes!("../../assets/chat/api.js")),
    ),
    (
        "/chat/socket.js",
        StaticFile::new(JS, include_bytes!("../../assets/chat/socket.js")),
    ),
    (
        "/chat/search.js",
        StaticFile::new(JS, include_bytes!("../../assets/chat/search.js")),
    ),
    (
        "/chat/markdown.js",
        StaticFile::new(JS, include_bytes!("../../assets/chat/markdown.js")),
    ),
    // Vendored libraries, unchanged (versions and licenses: assets/vendor/README.md).
    (
        "/chat/vendor/marked.esm.js",
        StaticFile::new(
            JS,
            include_bytes!("../../assets/vendor/marked/marked.esm.js"),
        ),
    ),
    (
        "/chat/vendor/purify.es.mjs",
        StaticFile::new(
            JS,
            include_bytes!("../../assets/vendor/dompurify/purify.es.mjs"),
        ),
    ),
    (
        "/chat/vendor/highlight.min.js",
        StaticFile::new(
            JS,
            include_bytes!("../../assets/vendor/highlight/highlight.min.js"),
        ),
    ),
    (
        "/chat/icon.svg",
        StaticFile::new(
            "image/svg+xml",
            include_bytes!("../../assets/chat/icon.svg"),
        ),
    ),
];

/// Routes of the page and its assets.
pub fn router() -> Router<AppState> {
    FILES.iter().fold(Router::new(), |router, (path, file)| {
        router.route(
            path,
            get(move |headers: HeaderMap, uri: Uri| async move { serve(file, &headers, &uri) }),
        )
    })
}

/// Answers a file, or 304 when the client's copy is current. Browsers revalidate on every
/// load (`no-cache`), so a new build is picked up at once and an unchanged file costs a 304.
fn serve(file: &StaticFile, request: &HeaderMap, uri: &Uri) -> Response {
    let etag = format!("\"{:016x}\"", file.hash);
    let mut response = if matches_etag(request, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, file.content_type)], file.body).into_response()
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    let host = request
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    if let Ok(value) = HeaderValue::from_str(&content_security_policy(host)) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response
}

/// Whether `If-None-Match` names this tag (weak comparison, as for a GET).
fn matches_etag(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

/// The page's policy: its own scripts, styles and images only, no inline code, no framing,
/// and network access to its own origin. `'self'` covers `ws:`/`wss:` to the same host only
/// in browsers that follow CSP level 3, so the socket's origin is named from the `Host`
/// header; a missing or odd `Host` leaves only `'self'`.
fn content_security_policy(host: Option<&str>) -> String {
    let sockets = match host.filter(|h| is_plain_host(h)) {
        Some(host) => format!(" ws://{host} wss://{host}"),
        None => String::new(),
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'{sockets}; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

/// A host name or address with an optional port, and nothing that could end a CSP source.
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

/// The link that opens the page signed in with `token`, for the start banner. The token is
/// in the fragment, which browsers never send to a server; the page removes it from the
/// address bar once read. An unspecified listen address becomes the loopback one.
pub fn signed_in_link(address: SocketAddr, token: &str) -> String {
    let ip = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let address = SocketAddr::new(ip, address.port());
    format!("http://{address}{PAGE_PATH}#token={token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_points_at_a_reachable_address() {
        let link = |a: &str| signed_in_link(a.parse().unwrap(), "abc.def.ghi");
        assert_eq!(
            link("0.0.0.0:8000"),
            "http://127.0.0.1:8000/chat#token=abc.def.ghi"
        );
        assert_eq!(
            link("[::]:9000"),
            "http://[::1]:9000/chat#token=abc.def.ghi"
        );
        assert_eq!(
            link("192.0.2.7:8080"),
            "http://192.0.2.7:8080/chat#token=abc.def.ghi"
        );
    }

    #[test]
    fn the_policy_names_the_host_only_when_it_is_plain() {
        let policy = content_security_policy(Some("chat.example.com:8443"));
        assert!(policy.contains(
            "connect-src 'self' ws://chat.example.com:8443 wss://chat.example.com:8443;"
        ));
        assert!(policy.starts_with("default-src 'none'; script-src 'self'; style-src 'self';"));
        for odd in ["evil; script-src *", "a b", "", "x\"y"] {
            assert!(
                content_security_policy(Some(odd)).contains("connect-src 'self';"),
                "{odd}"
            );
        }
        assert!(content_security_policy(None).contains("connect-src 'self';"));
    }

    #[test]
    fn etags_match_exactly_weakly_or_by_star() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static(value));
            headers
        };
        assert!(matches_etag(&with("\"ab\""), "\"ab\""));
        assert!(matches_etag(&with("W/\"ab\""), "\"ab\""));
        assert!(matches_etag(&with("\"x\", \"ab\""), "\"ab\""));
        assert!(matches_etag(&with("*"), "\"ab\""));
        assert!(!matches_etag(&with("\"abc\""), "\"ab\""));
        assert!(!matches_etag(&HeaderMap::new(), "\"ab\""));
    }
}
