//! The address guard of MCP servers, end to end: a user's server is never reached at this
//! host's own addresses nor at addresses that are not globally routable (literal or through a
//! name), unless the operator lists the host; global IPv6 literals are welcome.
//!
//! No traffic leaves this host: the listeners are the test's own, on this host's interface
//! addresses, and every other address is refused before anything connects.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use chat_service::mcp::{McpEndpoint, McpTool};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::fake_mcp::FakeMcp;
use crate::helpers::*;

/// Host names of the test's own, each standing for the addresses given (the service asks this
/// instead of the system's resolver; the guard judges what it answers).
struct Names(HashMap<String, Vec<IpAddr>>);

impl HostLookup for Names {
    fn lookup(&self, host: &str) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>> {
        let found = self.0.get(host).cloned();
        Box::pin(async move { found.ok_or_else(|| std::io::ErrorKind::NotFound.into()) })
    }
}

fn names(entries: &[(&str, IpAddr)]) -> Arc<dyn HostLookup> {
    let mut names: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for (name, ip) in entries {
        names.entry((*name).to_owned()).or_default().push(*ip);
    }
    Arc::new(Names(names))
}

/// This host's interface addresses that are neither loopback nor link-local (which needs a
/// scope to be reached).
fn own_addresses() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .expect("the interfaces can be read")
        .into_iter()
        .map(|interface| interface.ip())
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
            IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local(),
        })
        .collect()
}

/// `[::ffff:xxxx:xxxx]`: an IPv4-mapped address as the registration pattern takes it (hex,
/// not dotted).
fn mapped_host(v4: Ipv4Addr) -> String {
    let [a, b, c, d] = v4.octets();
    format!(
        "[::ffff:{:x}:{:x}]",
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, d])
    )
}

fn host_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// Registers each URL as one of `user`'s servers (with an API key the guard must keep from
/// them), then chats once, which lists the tools of every server.
async fn register_and_chat(app: &TestApp, user: &str, urls: &[String]) {
    let token = app.token(user, USER);
    for (index, url) in urls.iter().enumerate() {
        let body =
            json!({"name": format!("server{index}"), "server_url": url, "api_key": "sk-own"});
        let created = app.post_json("/api/v1/mcp-servers/", &token, &body).await;
        assert_eq!(created.status, 201, "{url}: {}", created.text);
    }
    let conversation = app.new_conversation(&token).await;
    let reply = app.chat(&token, &conversation, "what time is it?").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[tokio::test]
async fn a_listener_on_this_hosts_own_addresses_receives_nothing() {
    let own = own_addresses();
    if own.is_empty() {
        eprintln!("skipped: this host has no address besides loopback and link-local");
        return;
    }
    // One listener on every IPv4 interface and one on every IPv6 one, as a service on this
    // host would listen.
    let v4_listener = FakeMcp::start_rmcp_on(Ipv4Addr::UNSPECIFIED.into()).await;
    let v6_listener = FakeMcp::start_rmcp_on(Ipv6Addr::UNSPECIFIED.into()).await;
    let mut urls = Vec::new();
    let mut lookup = Vec::new();
    for (index, ip) in own.iter().enumerate() {
        let listener = match ip {
            IpAddr::V4(_) => &v4_listener,
            IpAddr::V6(_) => &v6_listener,
        };
        // The listener answers there: what it does not receive was refused.
        TcpStream::connect((*ip, listener.port()))
            .await
            .unwrap_or_else(|error| panic!("{ip} is reachable from here: {error}"));
        urls.push(listener.url_on(&host_of(*ip)));
        let name = format!("own-{index}.test");
        urls.push(listener.url_on(&name));
        lookup.push((name, *ip));
        if let IpAddr::V4(v4) = ip {
            urls.push(listener.url_on(&mapped_host(*v4)));
            let mapped = format!("mapped-{index}.test");
            urls.push(listener.url_on(&mapped));
            lookup.push((mapped, IpAddr::V6(v4.to_ipv6_mapped())));
        }
    }
    // Names that the system resolves to loopback, and loopback itself.
    urls.push(v4_listener.url_on("localhost"));
    urls.push(v4_listener.url_on("127.0.0.1"));
    urls.push(v6_listener.url_on("[::1]"));
    let lookup: Vec<(&str, IpAddr)> = lookup.iter().map(|(n, ip)| (n.as_str(), *ip)).collect();
    let lookup = Arc::new(FallBack {
        first: names(&lookup),
    });

    let app = spawn_app_with(TestOptions::new().mcp_lookup(lookup)).await;
    register_and_chat(&app, "mallory", &urls).await;

    assert!(
        v4_listener.requests().is_empty() && v6_listener.requests().is_empty(),
        "the service reached this host: {:#?} {:#?}",
        v4_listener.requests(),
        v6_listener.requests()
    );

    // What the operator lists is reached: the refusal above was the guard's.
    let ip = own[0];
    let listener = match ip {
        IpAddr::V4(_) => &v4_listener,
        IpAddr::V6(_) => &v6_listener,
    };
    let authority = format!("{}:{}", host_of(ip), listener.port());
    let allowed =
        spawn_app_with(TestOptions::new().settings(move |s| s.mcp.allowed_hosts = vec![authority]))
            .await;
    register_and_chat(&allowed, "operator", &[listener.url_on(&host_of(ip))]).await;
    let received = listener.wait_for(|requests| !requests.is_empty()).await;
    assert_eq!(
        received[0].authorization.as_deref(),
        Some("Bearer sk-own"),
        "{received:#?}"
    );
}

/// The test's names first, then the system's resolver (for `localhost`).
struct FallBack {
    first: Arc<dyn HostLookup>,
}

impl HostLookup for FallBack {
    fn lookup(&self, host: &str) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>> {
        let first = self.first.lookup(host);
        let host = host.to_owned();
        Box::pin(async move {
            match first.await {
                Ok(found) => Ok(found),
                Err(_) => chat_service::mcp::SystemLookup.lookup(&host).await,
            }
        })
    }
}

#[tokio::test]
async fn addresses_that_are_not_globally_routable_are_refused_before_connecting() {
    let special: Vec<(&str, IpAddr)> = [
        ("documentation.test", "192.0.2.1"),
        ("benchmarking.test", "198.18.0.1"),
        ("reserved.test", "240.0.0.1"),
        ("shared.test", "100.64.0.1"),
        ("ipv6-documentation.test", "2001:db8::1"),
        ("ipv6-unique-local.test", "fd00::1"),
        ("ipv6-translation.test", "64:ff9b:1::1"),
        ("mapped-benchmarking.test", "::ffff:198.18.0.1"),
    ]
    .into_iter()
    .map(|(name, ip)| (name, ip.parse().unwrap()))
    .collect();
    let mcp = McpTools::with_lookup(McpSettings::default(), names(&special));
    let mut urls: Vec<String> = [
        "http://192.0.2.1/mcp",
        "http://198.18.0.1:8080/mcp",
        "http://198.19.255.254/mcp",
        "http://240.0.0.1/mcp",
        "http://255.255.255.255/mcp",
        "http://0.0.0.0:8080/mcp",
        "http://[2001:db8::1]/mcp",
        "http://[3fff::1]/mcp",
        "http://[fd00::1]/mcp",
        "http://[fe80::1]/mcp",
        "http://[64:ff9b:1::1]/mcp",
        "http://[2002:c000:201::1]/mcp",
        "http://[::ffff:c612:1]/mcp",
        "http://[64:ff9b::c000:201]/mcp",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    urls.extend(special.iter().map(|(name, _)| format!("http://{name}/mcp")));

    for url in urls {
        let server = McpEndpoint {
            id: 1,
            name: "special".to_owned(),
            url: url.clone(),
            api_key: Some("sk-kept".to_owned()),
        };
        let tool = McpTool {
            server_id: 1,
            name: "echo".to_owned(),
            tool: "echo".to_owned(),
            description: None,
            input_schema: json!({"type": "object"}),
        };
        assert!(mcp
            .list(std::slice::from_ref(&server), None)
            .await
            .is_empty());
        let answer = mcp.call(&tool, &server, json!({"text": "hi"}), None).await;
        assert_eq!(
            answer,
            Err("The tool echo failed: the server address is not allowed".to_owned()),
            "{url}"
        );
    }
}

#[tokio::test]
async fn global_ipv6_literals_are_accepted_at_registration() {
    let app = spawn_app().await;
    let token = app.token("ipv6", USER);
    for url in [
        "https://[2606:4700:4700::1111]/mcp",
        "http://[2a00:1450:4001:82a::200e]:8443/mcp",
        "http://[::ffff:808:808]/",
    ] {
        let created = app
            .post_json(
                "/api/v1/mcp-servers/",
                &token,
                &json!({"name": "v6", "server_url": url}),
            )
            .await;
        assert_eq!(created.status, 201, "{url}: {}", created.text);
        assert_eq!(created.json()["server_url"], Value::from(url));
    }
    for url in [
        "http://[2606:4700::1111::1]/",
        "http://[::ffff:8.8.8.8]/",
        "http://[12345::]/",
    ] {
        let refused = app
            .post_json(
                "/api/v1/mcp-servers/",
                &token,
                &json!({"name": "v6", "server_url": url}),
            )
            .await;
        assert_eq!(refused.status, 422, "{url}: {}", refused.text);
        assert!(refused.detail().contains("server_url"), "{}", refused.text);
    }
}
