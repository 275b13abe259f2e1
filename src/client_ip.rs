//! The client's address: the peer's, or the one a trusted proxy forwarded.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderMap, Request};

/// The client address of a request. `X-Real-IP`, then the last untrusted hop of
/// `X-Forwarded-For`, are believed only when the peer is a trusted proxy.
pub fn client_ip<B>(request: &Request<B>, trusted: &[IpAddr]) -> Option<IpAddr> {
    client_address(request.extensions(), request.headers(), trusted)
}

/// [`client_ip`] from a request's parts.
pub fn client_address(
    extensions: &Extensions,
    headers: &HeaderMap,
    trusted: &[IpAddr],
) -> Option<IpAddr> {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    Some(forwarded(headers, trusted).unwrap_or(peer))
}

fn forwarded(headers: &HeaderMap, trusted: &[IpAddr]) -> Option<IpAddr> {
    if let Some(ip) = headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
    {
        return Some(ip);
    }
    // Walk from the nearest hop back; the first address that is not a trusted proxy is the
    // client, whatever a client wrote further left.
    let chain = headers.get("x-forwarded-for")?.to_str().ok()?;
    chain
        .rsplit(',')
        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
        .find(|ip| !trusted.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder();
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let mut request = builder.body(()).unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(peer.parse().unwrap(), 1234)));
        request
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let spoofed = request("203.0.113.9", &[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(
            client_ip(&spoofed, &[proxy]),
            Some("203.0.113.9".parse().unwrap())
        );
        let proxied = request("10.0.0.2", &[("x-forwarded-for", "6.6.6.6, 1.2.3.4")]);
        assert_eq!(
            client_ip(&proxied, &[proxy]),
            Some("1.2.3.4".parse().unwrap())
        );
        let real_ip = request("10.0.0.2", &[("x-real-ip", "5.6.7.8")]);
        assert_eq!(
            client_ip(&real_ip, &[proxy]),
            Some("5.6.7.8".parse().unwrap())
        );
    }
}
