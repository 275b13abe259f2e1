//! The OpenAPI document is exact: every reference resolves, every answer an operation can
//! give is declared, and the declared bounds are the ones the service enforces.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, TestApp, TestOptions, ADMIN, USER};

async fn document(app: &TestApp) -> Value {
    app.get_public("/openapi.json")
        .await
        .assert_status(200)
        .json()
}

/// Every operation of the document: (method, path, operation).
fn operations(document: &Value) -> Vec<(Method, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
            found.push((method, path.clone(), operation.clone()));
        }
    }
    assert!(found.len() > 20, "only {} operations", found.len());
    found
}

fn is_secured(operation: &Value) -> bool {
    operation["security"]
        .as_array()
        .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()))
}

fn declares(operation: &Value, status: u16) -> bool {
    operation["responses"].get(status.to_string()).is_some()
}

/// Every `$ref` under `value`, with where it was found.
fn references(value: &Value, at: &str, found: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("$ref", Value::String(target)) => found.push((at.to_owned(), target.clone())),
                    _ => references(child, &format!("{at}/{key}"), found),
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                references(child, &format!("{at}/{i}"), found);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn every_reference_resolves() {
    let app = spawn_app().await;
    let document = document(&app).await;
    let mut found = Vec::new();
    references(&document, "", &mut found);
    assert!(found.len() > 20, "only {} references", found.len());
    for (at, target) in found {
        let pointer = target
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: {target} is not local"));
        assert!(
            document.pointer(pointer).is_some(),
            "{at}: {target} does not resolve"
        );
    }
}

#[tokio::test]
async fn every_operation_declares_its_error_answers() {
    let app = spawn_app().await;
    let document = document(&app).await;
    for (method, path, operation) in operations(&document) {
        let name = format!("{method} {path}");
        // The OpenAI-compatible API answers OpenAI's errors, with its statuses.
        let openai = path.starts_with("/v1/");
        let error_schema = match openai {
            true => "#/components/schemas/OpenAiErrorBody",
            false => "#/components/schemas/ErrorBody",
        };
        if is_secured(&operation) {
            for status in [401, 403] {
                assert!(
                    declares(&operation, status),
                    "{name} does not declare {status}"
                );
                let schema = &operation["responses"][status.to_string()]["content"]
                    ["application/json"]["schema"]["$ref"];
                assert_eq!(schema, error_schema, "{name} {status}");
            }
            let challenge = &operation["responses"]["401"]["headers"]["www-authenticate"];
            assert!(
                challenge.is_object(),
                "{name}: 401 without WWW-Authenticate"
            );
        }
        if operation.get("requestBody").is_some() {
            let statuses = match openai {
                true => [400, 408, 413],
                false => [413, 415, 422],
            };
            for status in statuses {
                assert!(
                    declares(&operation, status),
                    "{name} does not declare {status}"
                );
            }
        }
        let has_query = operation["parameters"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["in"] == "query"));
        if has_query {
            assert!(declares(&operation, 422), "{name} does not declare 422");
        }
    }
}

/// Every operation, called without a token, by a user who owns nothing, and by an admin,
/// answers only statuses it declares; without a token, every secured one answers 401.
#[tokio::test]
async fn every_answer_is_declared() {
    let app = spawn_app().await;
    let document = document(&app).await;
    let alice = app.token("alice", USER);
    let bob = app.token("bob", USER);
    let admin = app.token("root", ADMIN);
    let alice_id = app.my_id(&alice).await;
    let conversation = app.new_conversation(&alice).await;
    app.say(&alice, &conversation, "user", "hello").await;
    // Deletions last, so that they take nothing away from the other calls.
    let mut calls = operations(&document);
    calls.sort_by_key(|(method, _, _)| *method == Method::DELETE);
    for (method, template, operation) in calls {
        let path = template
            .replace("{user_id}", &alice_id)
            .replace("{conversation_id}", &conversation)
            .replace("{username}", "alice");
        for (caller, token) in [
            ("no token", None),
            ("bob", Some(&bob)),
            ("admin", Some(&admin)),
        ] {
            let response = app
                .call(method.clone(), &path, token.map(String::as_str), None)
                .await;
            let status = response.status.as_u16();
            assert!(
                declares(&operation, status),
                "{method} {template} as {caller} answered undeclared {status}: {}",
                response.text
            );
            if token.is_none() && is_secured(&operation) {
                assert_eq!(status, 401, "{method} {template} without a token");
            }
        }
    }
}

/// A query parameter's declared bounds, as (operation path, name, minimum, maximum, the
/// operation's other required query parameters as `&name=x`).
fn bounded_parameters(document: &Value) -> Vec<(String, String, i64, Option<i64>, String)> {
    let mut found = Vec::new();
    for (method, path, operation) in operations(document) {
        if method != Method::GET {
            continue;
        }
        let parameters: Vec<&Value> = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "query")
            .collect();
        for parameter in &parameters {
            let schema = &parameter["schema"];
            if let Some(minimum) = schema["minimum"].as_i64() {
                let name = parameter["name"].as_str().expect("a name").to_owned();
                let required: String = parameters
                    .iter()
                    .filter(|p| p["required"] == true && p["name"] != name.as_str())
                    .map(|p| format!("&{}=x", p["name"].as_str().expect("a name")))
                    .collect();
                let maximum = schema["maximum"].as_i64();
                found.push((path.clone(), name, minimum, maximum, required));
            }
        }
    }
    found
}

#[tokio::test]
async fn declared_bounds_are_the_enforced_ones() {
    let app = spawn_app().await;
    let document = document(&app).await;
    let admin = app.token("root", ADMIN);
    let conversation = app.new_conversation(&admin).await;
    let bounded = bounded_parameters(&document);
    let names: Vec<&str> = bounded.iter().map(|(_, name, ..)| name.as_str()).collect();
    assert!(
        names.contains(&"skip") && names.contains(&"limit"),
        "{names:?}"
    );
    for (template, name, minimum, maximum, required) in bounded {
        let path = template
            .replace("{user_id}", "me")
            .replace("{conversation_id}", &conversation);
        let mut cases = vec![(minimum, 200), (minimum - 1, 422)];
        if let Some(maximum) = maximum {
            cases.extend([(maximum, 200), (maximum + 1, 422)]);
        }
        for (value, expected) in cases {
            let response = app
                .get(&format!("{path}?{name}={value}{required}"), &admin)
                .await;
            assert_eq!(
                response.status, expected,
                "{template} {name}={value}: {}",
                response.text
            );
        }
    }
    // The recent list is bounded more tightly than the others.
    let recent = &document["paths"]["/api/v1/users/{user_id}/conversations/recent"]["get"];
    let limit = recent["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    assert_eq!(limit["schema"]["maximum"], 20);
}

fn property<'a>(document: &'a Value, schema: &str, name: &str) -> &'a Value {
    &document["components"]["schemas"][schema]["properties"][name]
}

#[tokio::test]
async fn constraints_from_the_settings_are_declared_and_enforced() {
    let options = TestOptions::new().settings(|settings| {
        settings.llm.allowed_models = vec!["gpt-4o-mini".to_owned(), "local-model".to_owned()];
        settings.limits.max_message_chars = 50;
    });
    let app = spawn_app_with(options).await;
    let document = document(&app).await;
    assert_eq!(
        property(&document, "ConversationCreate", "model")["enum"],
        json!(["gpt-4o-mini", "local-model", null])
    );
    for schema in ["MessageCreate", "ChatRequest"] {
        assert_eq!(
            property(&document, schema, "content")["maxLength"],
            50,
            "{schema}"
        );
    }

    let alice = app.token("alice", USER);
    let created = app
        .create_conversation(&alice, &json!({"model": "local-model"}))
        .await;
    assert_eq!(created["model"], "local-model");
    app.post_json(
        "/api/v1/users/me/conversations",
        &alice,
        &json!({"model": "another-model"}),
    )
    .await
    .assert_status(422);
    let conversation = created["id"].as_str().unwrap();
    let messages = format!("/api/v1/conversations/{conversation}/messages");
    for (content, expected) in [("x".repeat(50), 201), ("x".repeat(51), 422)] {
        app.post_json(
            &messages,
            &alice,
            &json!({"role": "user", "content": content}),
        )
        .await
        .assert_status(expected);
    }
}

/// A property's pattern as a regular expression.
fn pattern(document: &Value, schema: &str, name: &str) -> regex::Regex {
    let pattern = property(document, schema, name)["pattern"]
        .as_str()
        .unwrap_or_else(|| panic!("{schema}.{name} has no pattern"));
    regex::Regex::new(pattern).unwrap_or_else(|e| panic!("{schema}.{name}: {e}"))
}

/// The declared patterns accept exactly what the service accepts.
#[tokio::test]
async fn text_patterns_agree_with_the_checks() {
    let app = spawn_app().await;
    let document = document(&app).await;
    for (schema, name, other) in [
        ("ConversationCreate", "title", "ConversationUpdate"),
        ("MessageCreate", "content", "ChatRequest"),
        ("UserCreate", "username", "UserUpdate"),
        ("UserCreate", "email", "UserUpdate"),
    ] {
        assert_eq!(
            property(&document, schema, name)["pattern"],
            property(&document, other, name)["pattern"],
            "{schema}.{name} and {other}.{name}"
        );
    }
    let alice = app.token("alice", USER);
    let admin = app.token("root", ADMIN);
    let conversation = app.new_conversation(&alice).await;
    let path = format!("/api/v1/users/me/conversations/{conversation}");

    let title = pattern(&document, "ConversationUpdate", "title");
    let titles = [
        "a", " a ", "", " ", "\t\n", "\u{3000}", "\u{85}", "\u{a0}x", "\u{200b}", "\u{1c}",
        "\u{feff}",
    ];
    let matching = titles.iter().filter(|s| title.is_match(s)).count();
    assert!(
        0 < matching && matching < titles.len(),
        "titles: {matching}"
    );
    for sample in titles {
        let status = app
            .patch_json(&path, &alice, &json!({"title": sample}))
            .await
            .status;
        assert_eq!(
            title.is_match(sample),
            status == 200,
            "title {sample:?}: {status}"
        );
    }

    let usernames = [
        "abc",
        " abc",
        "abc ",
        "a c",
        "ab\u{1}",
        "a\u{7f}b",
        "\u{3000}ab",
        "ab\u{85}",
        "a\u{a0}b",
        "\u{200b}ab",
        "日本語",
    ];
    let emails = [
        "a@b.c",
        "a@b",
        "@b.c",
        "a@.b",
        "a@b.",
        "a b@c.d",
        "a@b@c.d",
        "a@b..c",
        "ü@ö.ä",
        "a\u{3000}@b.c",
        "a@b.c\u{85}",
        "\u{1}@b.c",
    ];
    for (field, samples) in [("username", &usernames[..]), ("email", &emails[..])] {
        let rule = pattern(&document, "UserCreate", field);
        let matching = samples.iter().filter(|s| rule.is_match(s)).count();
        assert!(
            0 < matching && matching < samples.len(),
            "{field}: {matching}"
        );
        for (i, sample) in samples.iter().enumerate() {
            let mut body =
                json!({"username": format!("user{i}"), "email": format!("user{i}@example.com")});
            body[field] = json!(sample);
            let status = app.post_json("/api/v1/users", &admin, &body).await.status;
            assert_eq!(
                rule.is_match(sample),
                status == 201,
                "{field} {sample:?}: {status}"
            );
        }
    }
}

/// An integer written with a zero fraction is an integer, as JSON Schema says.
#[tokio::test]
async fn integers_may_have_a_zero_fraction() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let conversation = app.new_conversation(&alice).await;
    let message = app
        .add_message(
            &alice,
            &conversation,
            &json!({"role": "assistant", "content": "hi", "tokens_used": 12.0}),
        )
        .await;
    assert_eq!(message["tokens_used"], 12);
}
