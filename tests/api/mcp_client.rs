//! The MCP client (`chat_service::mcp`) against real MCP servers started by the test: rmcp's
//! own Streamable HTTP server and a plain JSON-RPC-over-POST one.

use std::time::{Duration, Instant};

use axum::http::Method;
use chat_service::mcp::{McpEndpoint, McpSettings, McpTool, McpTools};
use serde_json::{json, Value};

use crate::fake_mcp::FakeMcp;

/// Settings that let the client reach these local servers.
pub fn allowing(servers: &[&FakeMcp]) -> McpSettings {
    McpSettings {
        allowed_hosts: servers.iter().map(|server| server.authority()).collect(),
        ..McpSettings::default()
    }
}

/// `server` registered under `id` and `name`.
pub fn endpoint(id: i64, name: &str, server: &FakeMcp) -> McpEndpoint {
    McpEndpoint {
        id,
        name: name.to_owned(),
        url: server.url(),
        api_key: None,
    }
}

/// The tool called `name`.
pub fn named<'a>(tools: &'a [McpTool], name: &str) -> &'a McpTool {
    tools
        .iter()
        .find(|tool| tool.name == name)
        .unwrap_or_else(|| panic!("no tool {name} in {tools:#?}"))
}

#[tokio::test]
async fn the_tools_of_an_rmcp_server_are_listed_and_called() {
    let server = FakeMcp::start_rmcp().await;
    let mcp = McpTools::new(allowing(&[&server]));
    let time = endpoint(7, "clock", &server);

    let tools = mcp.list(std::slice::from_ref(&time), None).await;

    let mut names: Vec<&str> = tools.iter().map(|tool| tool.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "echo",
            "fail",
            "get_current_time",
            "reject",
            "repeat",
            "slow"
        ]
    );
    let get_time = named(&tools, "get_current_time");
    assert_eq!(get_time.server_id, 7);
    assert_eq!(get_time.tool, "get_current_time");
    assert_eq!(
        get_time.description.as_deref(),
        Some("The current time in a time zone.")
    );
    assert_eq!(get_time.input_schema["type"], "object");
    assert_eq!(
        get_time.input_schema["properties"]["timezone"]["type"],
        "string"
    );
    assert_eq!(named(&tools, "fail").input_schema["type"], "object");

    let answer = mcp
        .call(get_time, &time, json!({"timezone": "Europe/Paris"}), None)
        .await;

    assert_eq!(answer.as_deref(), Ok("It is 12:00 in Europe/Paris."));
    let calls = server.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].tool.as_deref(), Some("get_current_time"));
    assert_eq!(
        calls[0].arguments,
        Some(json!({"timezone": "Europe/Paris"}))
    );
    let handshake: Vec<Option<String>> = server
        .requests()
        .into_iter()
        .filter_map(|request| request.rpc_method.map(Some))
        .take(3)
        .collect();
    assert_eq!(
        handshake,
        [
            Some("initialize".to_owned()),
            Some("notifications/initialized".to_owned()),
            Some("tools/list".to_owned())
        ]
    );

    // Each list and call had its own session, and both are closed.
    let closed = server
        .wait_for(|requests| {
            requests
                .iter()
                .filter(|request| request.http_method == Method::DELETE)
                .count()
                == 2
        })
        .await;
    assert_eq!(
        closed
            .iter()
            .filter(|request| request.rpc_method.as_deref() == Some("initialize"))
            .count(),
        2
    );
}

#[tokio::test]
async fn a_plain_json_server_is_listed_across_pages_and_called() {
    let server = FakeMcp::start_plain_json().await;
    let mcp = McpTools::new(allowing(&[&server]));
    let timezone = endpoint(1, "timezone", &server);

    let tools = mcp.list(std::slice::from_ref(&timezone), None).await;

    let names: Vec<&str> = tools.iter().map(|tool| tool.name.as_str()).collect();
    assert_eq!(names, ["get_current_time", "structured_only"]);
    assert_eq!(server.count("tools/list"), 2, "{:#?}", server.requests());
    assert_eq!(server.count("notifications/initialized"), 1);
    // A tool listed without a schema is offered with an empty object schema.
    assert_eq!(
        named(&tools, "structured_only").input_schema,
        json!({"type": "object"})
    );

    // Declares an outputSchema but answers with content only.
    let time = mcp
        .call(
            named(&tools, "get_current_time"),
            &timezone,
            json!({"timezone": "Asia/Tokyo"}),
            None,
        )
        .await;
    assert_eq!(time.as_deref(), Ok("It is 09:30 in Asia/Tokyo."));

    // Structured content alone is given as JSON text.
    let zones = mcp
        .call(
            named(&tools, "structured_only"),
            &timezone,
            Value::Null,
            None,
        )
        .await
        .expect("structured result");
    let zones: Value = serde_json::from_str(&zones).expect("JSON text");
    assert_eq!(zones, json!({"zones": ["UTC", "Europe/Paris"]}));
    assert_eq!(server.calls().len(), 2);
}

#[tokio::test]
async fn tools_that_two_servers_share_are_named_after_their_server() {
    let rmcp = FakeMcp::start_rmcp().await;
    let plain = FakeMcp::start_plain_json().await;
    let mcp = McpTools::new(allowing(&[&rmcp, &plain]));
    let servers = [
        endpoint(1, "Main clock", &rmcp),
        endpoint(2, "timezone", &plain),
    ];

    let tools = mcp.list(&servers, None).await;

    assert!(tools.iter().all(|tool| tool.name != "get_current_time"));
    let main = named(&tools, "Main_clock__get_current_time");
    let zone = named(&tools, "timezone__get_current_time");
    assert_eq!(
        (main.server_id, main.tool.as_str()),
        (1, "get_current_time")
    );
    assert_eq!(
        (zone.server_id, zone.tool.as_str()),
        (2, "get_current_time")
    );
    assert_eq!(named(&tools, "echo").server_id, 1);
    assert_eq!(named(&tools, "structured_only").server_id, 2);

    let arguments = json!({"timezone": "UTC"});
    let from_main = mcp.call(main, &servers[0], arguments.clone(), None).await;
    let from_zone = mcp.call(zone, &servers[1], arguments, None).await;
    assert_eq!(from_main.as_deref(), Ok("It is 12:00 in UTC."));
    assert_eq!(from_zone.as_deref(), Ok("It is 09:30 in UTC."));
    assert_eq!((rmcp.calls().len(), plain.calls().len()), (1, 1));
}

#[tokio::test]
async fn tool_lists_are_cached_per_server_and_credentials() {
    let server = FakeMcp::start_rmcp().await;
    let mcp = McpTools::new(allowing(&[&server]));
    let clock = endpoint(1, "clock", &server);

    let first = mcp.list(std::slice::from_ref(&clock), None).await;
    let second = mcp.list(std::slice::from_ref(&clock), None).await;

    assert_eq!(first, second);
    assert_eq!(server.count("tools/list"), 1);
    assert_eq!(server.count("initialize"), 1);

    // Other credentials are another list.
    let with_key = McpEndpoint {
        api_key: Some("key-1".to_owned()),
        ..clock.clone()
    };
    assert_eq!(
        mcp.list(std::slice::from_ref(&with_key), None).await.len(),
        first.len()
    );
    assert_eq!(mcp.list(&[with_key], None).await.len(), first.len());
    assert_eq!(server.count("tools/list"), 2);

    // A zero cache time lists every time.
    let uncached = McpTools::new(McpSettings {
        tools_cache: Duration::ZERO,
        ..allowing(&[&server])
    });
    uncached.list(std::slice::from_ref(&clock), None).await;
    uncached.list(std::slice::from_ref(&clock), None).await;
    assert_eq!(server.count("tools/list"), 4);
}

#[tokio::test]
async fn failing_tools_give_the_model_a_message() {
    let server = FakeMcp::start_rmcp().await;
    let mcp = McpTools::new(allowing(&[&server]));
    let clock = endpoint(1, "clock", &server);
    let tools = mcp.list(std::slice::from_ref(&clock), None).await;

    for (tool, arguments, expected) in [
        // The tool reports an error.
        (
            "fail",
            json!({}),
            "The tool fail failed: the clock is broken",
        ),
        // The server answers with a JSON-RPC error.
        (
            "reject",
            json!({}),
            "The tool reject failed: the server answered with an error: no such clock",
        ),
        // The model's arguments are not an object: nothing is sent.
        (
            "echo",
            json!(["text"]),
            "The tool echo failed: its arguments must be a JSON object",
        ),
    ] {
        let answer = mcp.call(named(&tools, tool), &clock, arguments, None).await;
        assert_eq!(answer, Err(expected.to_owned()));
    }
    assert_eq!(server.calls().len(), 2);

    let elsewhere = McpEndpoint { id: 2, ..clock };
    let misrouted = mcp
        .call(named(&tools, "echo"), &elsewhere, json!({}), None)
        .await;
    assert_eq!(
        misrouted,
        Err("The tool echo failed: the tool does not belong to this server".to_owned())
    );
    assert_eq!(server.calls().len(), 2);
}

#[tokio::test]
async fn a_hanging_tool_fails_within_the_timeout() {
    let server = FakeMcp::start_rmcp().await;
    let timeout = Duration::from_millis(500);
    let mcp = McpTools::new(McpSettings {
        timeout,
        ..allowing(&[&server])
    });
    let clock = endpoint(1, "clock", &server);
    let tools = mcp.list(std::slice::from_ref(&clock), None).await;

    let started = Instant::now();
    let answer = mcp
        .call(named(&tools, "slow"), &clock, json!({}), None)
        .await;
    let took = started.elapsed();

    assert_eq!(
        answer,
        Err("The tool slow failed: the server did not answer within 0.5 seconds".to_owned())
    );
    assert!(took >= timeout, "gave up after {took:?}");
    assert_eq!(server.calls().len(), 1);
}

#[tokio::test]
async fn long_results_are_cut_to_the_limit() {
    let server = FakeMcp::start_rmcp().await;
    let mcp = McpTools::new(McpSettings {
        max_result_chars: 100,
        ..allowing(&[&server])
    });
    let clock = endpoint(1, "clock", &server);
    let tools = mcp.list(std::slice::from_ref(&clock), None).await;
    let repeat = named(&tools, "repeat");

    let long = mcp
        .call(repeat, &clock, json!({"text": "é", "times": 1000}), None)
        .await
        .expect("result");
    assert_eq!(
        long,
        format!(
            "{}\n[The result was cut to 100 of its 1000 characters.]",
            "é".repeat(100)
        )
    );

    let short = mcp
        .call(repeat, &clock, json!({"text": "ab", "times": 50}), None)
        .await;
    assert_eq!(short, Ok("ab".repeat(50)));
}

#[tokio::test]
async fn loopback_servers_are_refused_unless_allowed() {
    let server = FakeMcp::start_rmcp().await;
    let by_address = endpoint(1, "clock", &server);
    let by_name = McpEndpoint {
        url: server.url_on("localhost"),
        ..by_address.clone()
    };
    let echo = McpTool {
        server_id: 1,
        name: "echo".to_owned(),
        tool: "echo".to_owned(),
        description: None,
        input_schema: json!({"type": "object"}),
    };
    let arguments = json!({"text": "hi"});

    let guarded = McpTools::new(McpSettings::default());
    let address_allowed = McpTools::new(allowing(&[&server]));
    let file = McpEndpoint {
        url: "file:///etc/passwd".to_owned(),
        ..by_address.clone()
    };
    for (mcp, refused, reason) in [
        (&guarded, &by_address, "the server address is not allowed"),
        // Allowing 127.0.0.1 does not allow another name that resolves to it.
        (
            &address_allowed,
            &by_name,
            "the server address is not allowed",
        ),
        (
            &address_allowed,
            &file,
            "the server address is not an http or https URL",
        ),
    ] {
        let listed = mcp.list(std::slice::from_ref(refused), None).await;
        assert!(listed.is_empty(), "{}", refused.url);
        let answer = mcp.call(&echo, refused, arguments.clone(), None).await;
        assert_eq!(answer, Err(format!("The tool echo failed: {reason}")));
    }
    assert!(server.requests().is_empty(), "{:#?}", server.requests());

    // What is listed goes through.
    let name_allowed = McpTools::new(McpSettings {
        allowed_hosts: vec![format!("localhost:{}", server.port())],
        ..McpSettings::default()
    });
    for (mcp, allowed) in [(&name_allowed, &by_name), (&address_allowed, &by_address)] {
        let listed = mcp.list(std::slice::from_ref(allowed), None).await;
        assert_eq!(listed.len(), 6, "{}", allowed.url);
        let answer = mcp.call(&echo, allowed, arguments.clone(), None).await;
        assert_eq!(answer, Ok("hi".to_owned()));
    }
}

#[tokio::test]
async fn the_user_token_goes_only_to_the_listed_hosts() {
    let trusted = FakeMcp::start_rmcp().await;
    let keyed = FakeMcp::start_plain_json().await;
    let bare = FakeMcp::start_rmcp().await;
    let mcp = McpTools::new(McpSettings {
        forward_user_token_hosts: vec![trusted.authority()],
        ..allowing(&[&trusted, &keyed, &bare])
    });
    let servers = [
        McpEndpoint {
            api_key: Some("key-of-trusted".to_owned()),
            ..endpoint(1, "trusted", &trusted)
        },
        McpEndpoint {
            api_key: Some("key-of-keyed".to_owned()),
            ..endpoint(2, "keyed", &keyed)
        },
        endpoint(3, "bare", &bare),
    ];
    let user_token = Some("the-users-jwt");

    let tools = mcp.list(&servers, user_token).await;
    for (tool, server) in [
        ("trusted__get_current_time", &servers[0]),
        ("keyed__get_current_time", &servers[1]),
        ("bare__get_current_time", &servers[2]),
    ] {
        let answer = mcp
            .call(
                named(&tools, tool),
                server,
                json!({"timezone": "UTC"}),
                user_token,
            )
            .await;
        assert!(answer.is_ok(), "{tool}: {answer:?}");
    }

    for (server, expected) in [
        (&trusted, Some("Bearer the-users-jwt")),
        (&keyed, Some("Bearer key-of-keyed")),
        (&bare, None),
    ] {
        let requests = server.requests();
        assert!(requests
            .iter()
            .any(|r| r.rpc_method.as_deref() == Some("tools/call")));
        for request in requests {
            assert_eq!(request.authorization.as_deref(), expected, "{request:?}");
        }
    }
}
