//! `GET /api/v1/search` on both backends: the query language, ranking, snippets and their
//! highlight ranges, filters, what deletes take out of the index, hostile queries, and who may
//! search whose messages.

use serde_json::{json, Value};
use sqlx::{Connection, Executor};

use crate::helpers::{spawn_app, spawn_app_with, TestApp, TestOptions, TestResponse};
use crate::test_database::TestDatabase;

/// Runs each named test function once per backend, as `sqlite::name` and `postgres::name`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::spawn_app().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(database) = super::TestDatabase::postgres().await else {
                        return;
                    };
                    let options = super::TestOptions::new().database(database);
                    super::$name(super::spawn_app_with(options).await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    words_phrases_prefixes_exclusions_and_accents,
    a_word_said_three_times_ranks_above_one_said_once,
    snippets_mark_the_matched_words,
    titles_come_first_and_pages_span_both,
    filters_narrow_the_messages,
    deleted_messages_and_conversations_leave_the_index,
    hostile_queries_answer_200_or_422,
    another_users_messages_are_never_found,
    admins_and_managers_may_search_a_user,
    pages_go_on_past_the_ranked_matches,
);

/// Creates a conversation with this title for the token's user; answers its public ID.
async fn titled(app: &TestApp, token: &str, title: &str) -> String {
    let conversation = app
        .create_conversation(token, &json!({ "title": title }))
        .await;
    conversation["id"].as_str().unwrap().to_owned()
}

/// Searches as `token` with the query parameters `params`.
async fn search(app: &TestApp, token: &str, params: &[(&str, &str)]) -> TestResponse {
    let request = app
        .request(reqwest::Method::GET, "/api/v1/search")
        .bearer_auth(token)
        .query(params);
    app.send(request).await
}

/// The hits of `q`, asserting a 200.
async fn hits(app: &TestApp, token: &str, q: &str) -> Vec<Value> {
    let response = search(app, token, &[("q", q)]).await;
    response.assert_status(200);
    let hits: Vec<Value> = serde_json::from_value(response.json()).unwrap();
    assert_eq!(response.total(), hits.len() as i64, "{q}");
    hits
}

/// The snippets of the message hits of `q`.
async fn found(app: &TestApp, token: &str, q: &str) -> Vec<String> {
    hits(app, token, q)
        .await
        .iter()
        .filter(|hit| !hit["message_id"].is_null())
        .map(|hit| hit["snippet"].as_str().unwrap().to_owned())
        .collect()
}

/// The texts that a hit's highlight ranges (UTF-16 code units) cover.
fn marked(hit: &Value) -> Vec<String> {
    let units: Vec<u16> = hit["snippet"].as_str().unwrap().encode_utf16().collect();
    hit["highlights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|range| {
            let start = range["start"].as_u64().unwrap() as usize;
            let end = range["end"].as_u64().unwrap() as usize;
            String::from_utf16(&units[start..end]).unwrap()
        })
        .collect()
}

fn sorted(mut texts: Vec<String>) -> Vec<String> {
    texts.sort();
    texts
}

async fn words_phrases_prefixes_exclusions_and_accents(app: TestApp) {
    let alice = app.token("alice", &["user"]);
    let conversation = app.new_conversation(&alice).await;
    for text in [
        "Le Café est fermé le lundi",
        "the quick brown fox",
        "a brown quick dog",
        "caffeine and naïve questions",
    ] {
        app.say(&alice, &conversation, "user", text).await;
    }
    assert_eq!(
        found(&app, &alice, "cafe").await,
        ["Le Café est fermé le lundi"]
    );
    assert_eq!(found(&app, &alice, "CAFÉ FERME").await.len(), 1);
    assert_eq!(
        found(&app, &alice, "NAIVE").await,
        ["caffeine and naïve questions"]
    );
    assert_eq!(
        sorted(found(&app, &alice, "caf*").await),
        ["Le Café est fermé le lundi", "caffeine and naïve questions"]
    );
    assert_eq!(
        sorted(found(&app, &alice, "quick brown").await),
        ["a brown quick dog", "the quick brown fox"]
    );
    assert_eq!(
        found(&app, &alice, "\"quick brown\"").await,
        ["the quick brown fox"]
    );
    assert_eq!(
        found(&app, &alice, "\"brown qui*\"").await,
        ["a brown quick dog"]
    );
    assert_eq!(
        found(&app, &alice, "brown -fox").await,
        ["a brown quick dog"]
    );
    assert_eq!(
        found(&app, &alice, "brown -\"quick brown\"").await,
        ["a brown quick dog"]
    );
    assert!(found(&app, &alice, "brown -quick").await.is_empty());
    assert!(found(&app, &alice, "absent").await.is_empty());
    // Words all match: one that is missing leaves nothing.
    assert!(found(&app, &alice, "fox absent").await.is_empty());
}

async fn a_word_said_three_times_ranks_above_one_said_once(app: TestApp) {
    let alice = app.token("alice", &["user"]);
    let conversation = app.new_conversation(&alice).await;
    app.say(
        &alice,
        &conversation,
        "user",
        "apple pie with cream and sugar",
    )
    .await;
    let thrice = app
        .say(&alice, &conversation, "assistant", "apple, apple and apple")
        .await;
    app.say(&alice, &conversation, "user", "pear and sugar")
        .await;
    let hits = hits(&app, &alice, "apple").await;
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0]["message_id"], thrice["id"]);
    assert!(hits[0]["rank"].as_f64().unwrap() > hits[1]["rank"].as_f64().unwrap());
    assert_eq!(hits[0]["role"], "assistant");
    assert_eq!(hits[0]["conversation_id"], conversation.as_str());
    assert_eq!(hits[0]["conversation_title"], "chat");
    assert_eq!(hits[0]["timestamp"], thrice["timestamp"]);
}

async fn snippets_mark_the_matched_words(app: TestApp) {
    let alice = app.token("alice", &["user"]);
    let conversation = app.new_conversation(&alice).await;
    let filler = "lorem ipsum dolor sit amet ".repeat(30);
    let long = format!("{filler}the Needle is\nhere, beside a haystack. {filler}");
    app.say(&alice, &conversation, "user", &long).await;
    app.say(
        &alice,
        &conversation,
        "user",
        "🎉🎉 party at the Café 🎉 café",
    )
    .await;

    let hits = hits(&app, &alice, "needle haystack").await;
    let snippet = hits[0]["snippet"].as_str().unwrap();
    assert!(
        snippet.starts_with('…') && snippet.ends_with('…'),
        "{snippet}"
    );
    let length = snippet.chars().count();
    assert!((140..=162).contains(&length), "{length}: {snippet}");
    assert!(snippet.contains("the Needle is here, beside"), "{snippet}");
    assert_eq!(marked(&hits[0]), ["Needle", "haystack"]);

    // Ranges count UTF-16 code units: each emoji before a word moves it by two.
    let hits = self::hits(&app, &alice, "cafe").await;
    assert_eq!(hits[0]["snippet"], "🎉🎉 party at the Café 🎉 café");
    assert_eq!(
        hits[0]["highlights"],
        json!([{"start": 18, "end": 22}, {"start": 26, "end": 30}])
    );
    assert_eq!(marked(&hits[0]), ["Café", "café"]);
    assert_eq!(
        marked(&self::hits(&app, &alice, "par*").await[0]),
        ["party"]
    );
    assert_eq!(
        marked(&self::hits(&app, &alice, "\"at the\" party").await[0]),
        ["party", "at the"]
    );
}

async fn titles_come_first_and_pages_span_both(app: TestApp) {
    let alice = app.token("alice", &["user"]);
    let plans = titled(&app, &alice, "Holiday plans").await;
    let other = app.new_conversation(&alice).await;
    let message = app
        .say(&alice, &other, "user", "the holiday photos are here")
        .await;

    let all = hits(&app, &alice, "holiday").await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["conversation_id"], plans.as_str());
    assert_eq!(all[0]["message_id"], Value::Null);
    assert_eq!(all[0]["role"], Value::Null);
    assert_eq!(all[0]["snippet"], "Holiday plans");
    assert_eq!(marked(&all[0]), ["Holiday"]);
    assert_eq!(all[1]["message_id"], message["id"]);

    let second = search(
        &app,
        &alice,
        &[("q", "holiday"), ("skip", "1"), ("limit", "1")],
    )
    .await;
    second.assert_status(200);
    assert_eq!(second.total(), 2);
    assert_eq!(second.json()[0]["message_id"], message["id"]);
    let first = search(&app, &alice, &[("q", "holiday"), ("limit", "1")]).await;
    assert_eq!(first.total(), 2);
    assert_eq!(first.json()[0]["message_id"], Value::Null);
    let past = search(&app, &alice, &[("q", "holiday"), ("skip", "5")]).await;
    assert_eq!(past.total(), 2);
    assert_eq!(past.json(), json!([]));

    // A renamed conversation is found by its new title only.
    let path = format!("/api/v1/users/me/conversations/{plans}");
    app.patch_json(&path, &alice, &json!({"title": "Trip to Zürich"}))
        .await
        .assert_status(200);
    assert_eq!(hits(&app, &alice, "holiday").await.len(), 1);
    let renamed = hits(&app, &alice, "zurich").await;
    assert_eq!(renamed[0]["conversation_title"], "Trip to Zürich");
    assert_eq!(marked(&renamed[0]), ["Zürich"]);

    for (name, value) in [("limit", "0"), ("limit", "101"), ("skip", "-1")] {
        let response = search(&app, &alice, &[("q", "holiday"), (name, value)]).await;
        response.assert_status(422);
        assert!(response.detail().contains(name), "{}", response.detail());
    }
}

async fn filters_narrow_the_messages(app: TestApp) {
    let alice = app.token("alice", &["user"]);
    let first = titled(&app, &alice, "about rust").await;
    let second = app.new_conversation(&alice).await;
    app.say(&alice, &first, "user", "rust question").await;
    app.say(&alice, &first, "assistant", "rust answer").await;
    app.say(&alice, &second, "user", "more rust").await;

    let count = |params: Vec<(&'static str, String)>| {
        let app = &app;
        let alice = &alice;
        async move {
            let mut all = vec![("q", "rust".to_owned())];
            all.extend(params);
            let params: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let response = search(app, alice, &params).await;
            response.assert_status(200);
            response.total()
        }
    };
    assert_eq!(count(vec![]).await, 4, "three messages and a title");
    assert_eq!(count(vec![("conversation_id", first.clone())]).await, 3);
    assert_eq!(count(vec![("conversation_id", second.clone())]).await, 1);
    assert_eq!(count(vec![("role", "user".to_owned())]).await, 2);
    assert_eq!(count(vec![("role", "assistant".to_owned())]).await, 1);
    let today = chrono::Utc::now().date_naive();
    let yesterday = today.pred_opt().unwrap().to_string();
    let tomorrow = today.succ_opt().unwrap().to_string();
    let today = today.to_string();
    assert_eq!(count(vec![("from", today.clone())]).await, 3);
    assert_eq!(count(vec![("to", today.clone())]).await, 3);
    assert_eq!(
        count(vec![("from", today.clone()), ("to", today.clone())]).await,
        3
    );
    assert_eq!(count(vec![("to", yesterday.clone())]).await, 0);
    assert_eq!(count(vec![("from", tomorrow.clone())]).await, 0);
    let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    assert_eq!(count(vec![("from", hour_ago)]).await, 3);

    for (name, value) in [
        ("from", "yesterday"),
        ("to", "2026-02-30"),
        ("role", "robot"),
        ("role", ""),
    ] {
        let response = search(&app, &alice, &[("q", "rust"), (name, value)]).await;
        response.assert_status(422);
        assert!(response.detail().contains(name), "{}", response.detail());
    }
    // A period that ends before it starts holds nothing, as in the usage reports.
    let backwards = search(
        &app,
        &alice,
        &[("q", "rust"), ("from", &tomorrow), ("to", &yesterday)],
    )
    .await;
    backwards.assert_status(200);
    assert_eq!(backwards.json(), json!([]));
    for unknown in ["nope", "", "AAAAAAAAAAAA", "🎉"] {
        search(&app, &alice, &[("q", "rust"), ("conversation_id", unknown)])
            .await
            .assert_status(404);
    }
}

async fn deleted_messages_and_conversations_leave_the_index(app: TestApp) {
    let alice = app.token("alice", &["user"]);
    let admin = app.token("root", &["admin"]);
    let kept = app.new_conversation(&alice).await;
    let gone = app.new_conversation(&alice).await;
    app.say(&alice, &kept, "user", "zebra kept").await;
    let single = app.say(&alice, &kept, "user", "zebra single").await;
    app.say(&alice, &gone, "user", "zebra gone").await;
    assert_eq!(hits(&app, &alice, "zebra").await.len(), 3);

    app.delete(&format!("/api/v1/users/me/conversations/{gone}"), &alice)
        .await
        .assert_status(200);
    assert_eq!(
        sorted(found(&app, &alice, "zebra").await),
        ["zebra kept", "zebra single"]
    );

    // A message deleted on its own (as a branch is) leaves the index too.
    let key = app
        .state
        .ids
        .message
        .decode(single["id"].as_str().unwrap())
        .unwrap();
    execute(&app, &format!("DELETE FROM messages WHERE id = {key}")).await;
    assert_eq!(found(&app, &alice, "zebra").await, ["zebra kept"]);
    check_index(&app).await;

    // Deleting the user deletes everything of theirs; a new user of the same name finds
    // nothing.
    app.delete("/api/v1/users/alice", &admin)
        .await
        .assert_status(200);
    check_index(&app).await;
    assert!(hits(&app, &alice, "zebra").await.is_empty());
    assert!(hits(&app, &alice, "chat").await.is_empty());
}

async fn pages_go_on_past_the_ranked_matches(app: TestApp) {
    let alice = app.token("alice", &["user"]);
    let conversation = app.new_conversation(&alice).await;
    let key = app.state.ids.conversation.decode(&conversation).unwrap();
    // More matches than a search ranks (1,000): the older ones follow by time.
    execute(
        &app,
        &format!(
            "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1003) \
             INSERT INTO messages (conversation_id, role, content, timestamp, updated_at) \
             SELECT {key}, 'user', 'needle number ' || i, i, i FROM n"
        ),
    )
    .await;
    app.say(&alice, &conversation, "user", "needle needle needle")
        .await;
    let mut seen = std::collections::HashSet::new();
    let mut first = None;
    for skip in (0..1100).step_by(100) {
        let skip = skip.to_string();
        let response = search(
            &app,
            &alice,
            &[("q", "needle"), ("skip", &skip), ("limit", "100")],
        )
        .await;
        response.assert_status(200);
        assert_eq!(response.total(), 1004);
        for hit in response.json().as_array().unwrap() {
            first.get_or_insert_with(|| hit["snippet"].clone());
            assert!(seen.insert(hit["message_id"].as_str().unwrap().to_owned()));
        }
    }
    assert_eq!(seen.len(), 1004, "every match once, none twice");
    assert_eq!(first.unwrap(), "needle needle needle");
    let last = search(&app, &alice, &[("q", "needle"), ("skip", "1003")]).await;
    assert_eq!(last.json()[0]["snippet"], "needle number 1");
}

/// Runs `sql` on the app's database, beside the server.
async fn execute(app: &TestApp, sql: &str) {
    let url = app.database_url();
    if url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(&url).await.unwrap();
        connection
            .execute("PRAGMA foreign_keys = ON")
            .await
            .unwrap();
        connection.execute(sql).await.unwrap();
    } else {
        let mut connection = sqlx::PgConnection::connect(&url).await.unwrap();
        connection.execute(sql).await.unwrap();
    }
}

/// On SQLite, FTS5's own check that the indexes hold what their content says (deleting with
/// wrong values would leave entries behind).
async fn check_index(app: &TestApp) {
    if app.database_url().starts_with("sqlite:") {
        execute(
            app,
            "INSERT INTO messages_search (messages_search) VALUES ('integrity-check')",
        )
        .await;
        execute(
            app,
            "INSERT INTO conversations_search (conversations_search) \
             VALUES ('integrity-check')",
        )
        .await;
    }
}

async fn hostile_queries_answer_200_or_422(app: TestApp) {
    let alice = app.token("alice", &["user"]);
    let conversation = app.new_conversation(&alice).await;
    app.say(
        &alice,
        &conversation,
        "user",
        "near and or not drop table 🎉 x2",
    )
    .await;
    let long = "a".repeat(10_000);
    let many: Vec<String> = (0..40).map(|i| format!("word{i}")).collect();
    let many = many.join(" ");
    let hostile = [
        "\"",
        "\"\"",
        "*",
        "**",
        "NEAR(",
        "NEAR(a b",
        "AND OR",
        "a AND",
        "OR",
        "NOT a",
        "'; DROP TABLE messages; --",
        "\0",
        "a\0b",
        "🎉",
        "🎉*",
        "-",
        "-a",
        "--",
        "(((",
        ")",
        "col:word",
        "content:near",
        "owner:u1",
        "{owner}: u1",
        "^a",
        "a:*",
        "'a':*",
        "!a",
        "a & b | c",
        "a <-> b",
        "\\",
        "%",
        "_",
        "'",
        "x*y*",
        "\u{301}\u{301}*",
        "日本*",
        "\u{FEFF}",
        "\u{200B}",
        &long,
        &many,
        " ",
        "",
    ];
    for q in hostile {
        let response = search(&app, &alice, &[("q", q)]).await;
        assert!(
            response.status == 200 || response.status == 422,
            "{q:?}: {} {}",
            response.status,
            response.text
        );
        if response.status == 422 {
            assert!(
                response.detail().starts_with("q"),
                "{q:?}: {}",
                response.text
            );
        } else {
            let _ = response.total();
        }
    }
    search(&app, &alice, &[]).await.assert_status(422);
    search(&app, &alice, &[("q", &long)])
        .await
        .assert_status(422);
    search(&app, &alice, &[("q", &many)])
        .await
        .assert_status(422);
    // Operators are plain words, and found as such.
    assert_eq!(found(&app, &alice, "NEAR( AND OR").await.len(), 1);
    assert_eq!(found(&app, &alice, "'; DROP TABLE").await.len(), 1);
    for (name, value) in [("user_id", "a\0b"), ("conversation_id", "a\0b")] {
        let response = search(&app, &alice, &[("q", "near"), (name, value)]).await;
        assert!(
            [403, 404].contains(&response.status.as_u16()),
            "{name}: {} {}",
            response.status,
            response.text
        );
    }
    let admin = app.token("root", &["admin"]);
    search(&app, &admin, &[("q", "near"), ("user_id", "a\0b")])
        .await
        .assert_status(404);
}

async fn another_users_messages_are_never_found(app: TestApp) {
    let alice = app.token("alice", &["user"]);
    let bob = app.token("bob", &["user"]);
    let hers = titled(&app, &alice, "secret plans").await;
    app.say(&alice, &hers, "user", "the secret recipe").await;
    let his = titled(&app, &bob, "secret bob").await;
    app.say(&bob, &his, "user", "bob's secret").await;

    let found = hits(&app, &alice, "secret").await;
    assert_eq!(found.len(), 2);
    assert!(found
        .iter()
        .all(|hit| hit["conversation_id"] == hers.as_str()));
    assert!(hits(&app, &alice, "bob").await.is_empty());
    search(&app, &alice, &[("q", "secret"), ("conversation_id", &his)])
        .await
        .assert_status(404);
    search(&app, &alice, &[("q", "secret"), ("user_id", "bob")])
        .await
        .assert_status(403);
    let bob_id = app.my_id(&bob).await;
    search(&app, &alice, &[("q", "secret"), ("user_id", &bob_id)])
        .await
        .assert_status(403);
    for name in ["me", "alice"] {
        let response = search(&app, &alice, &[("q", "secret"), ("user_id", name)]).await;
        response.assert_status(200);
        assert_eq!(response.total(), 2);
    }
    // An anonymous chat is nobody's: no search reaches it.
    let mut anonymous = app.connect("/ws/chat").await;
    anonymous
        .send(json!({"type": "start_conversation", "data": {"title": "secret anon"}}))
        .await;
    let started = anonymous.next().await;
    assert_eq!(started["success"], true, "{started}");
    assert_eq!(hits(&app, &alice, "anon").await.len(), 0);
}

async fn admins_and_managers_may_search_a_user(app: TestApp) {
    let alice = app.token("alice", &["user"]);
    let conversation = app.new_conversation(&alice).await;
    app.say(&alice, &conversation, "user", "quarterly report")
        .await;
    let alice_id = app.my_id(&alice).await;
    for token in [
        app.token("root", &["admin"]),
        app.token("boss", &["manager"]),
    ] {
        // Their own messages by default, the named user's with `user_id`.
        assert!(hits(&app, &token, "quarterly").await.is_empty());
        for who in ["alice", alice_id.as_str()] {
            let response = search(&app, &token, &[("q", "quarterly"), ("user_id", who)]).await;
            response.assert_status(200);
            assert_eq!(response.total(), 1);
            assert_eq!(response.json()[0]["snippet"], "quarterly report");
        }
        search(&app, &token, &[("q", "quarterly"), ("user_id", "nobody")])
            .await
            .assert_status(404);
        let filtered = search(
            &app,
            &token,
            &[
                ("q", "quarterly"),
                ("user_id", "alice"),
                ("conversation_id", &conversation),
            ],
        )
        .await;
        filtered.assert_status(200);
        assert_eq!(filtered.total(), 1);
    }
    let response = app.get("/api/v1/search?q=x", "not-a-token").await;
    response.assert_status(401);
    app.get("/api/v1/search?q=x", &app.expired_token("alice"))
        .await
        .assert_status(401);
}

/// Messages stored before the search migration are found: the migration indexes them.
#[tokio::test]
async fn messages_stored_before_the_index_are_found_on_sqlite() {
    stored_before_the_index(TestDatabase::sqlite()).await;
}

/// The same on PostgreSQL.
#[tokio::test]
async fn messages_stored_before_the_index_are_found_on_postgres() {
    if let Some(database) = TestDatabase::postgres().await {
        stored_before_the_index(database).await;
    }
}

async fn stored_before_the_index(database: TestDatabase) {
    let url = database.url().to_owned();
    let sqlite = url.starts_with("sqlite:");
    // The migrations before this one, as a folder of their own.
    let dialect = if sqlite { "sqlite" } else { "postgres" };
    let folder = tempfile::tempdir().unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dialect);
    for entry in std::fs::read_dir(source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < "0007" {
            std::fs::copy(&path, folder.path().join(name)).unwrap();
        }
    }
    let migrator = sqlx::migrate::Migrator::new(folder.path()).await.unwrap();
    let rows = "INSERT INTO users (id, username, created_at, updated_at) VALUES (1, 'alice', 0, 0);
        INSERT INTO conversations (id, user_id, title, created_at, updated_at)
            VALUES (1, 1, 'Olden title', 0, 0);
        INSERT INTO messages (id, conversation_id, role, content, timestamp, updated_at)
            VALUES (1, 1, 'user', 'an élan from before', 0, 0)";
    if sqlite {
        let options = url
            .parse::<sqlx::sqlite::SqliteConnectOptions>()
            .unwrap()
            .create_if_missing(true);
        let mut connection = sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap();
        migrator.run(&mut connection).await.unwrap();
        sqlx::raw_sql(rows).execute(&mut connection).await.unwrap();
    } else {
        let mut connection = sqlx::PgConnection::connect(&url).await.unwrap();
        migrator.run(&mut connection).await.unwrap();
        sqlx::raw_sql(rows).execute(&mut connection).await.unwrap();
    }
    let app = spawn_app_with(TestOptions::new().database(database)).await;
    let alice = app.token("alice", &["user"]);
    let hits = hits(&app, &alice, "elan").await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["snippet"], "an élan from before");
    assert_eq!(self::hits(&app, &alice, "olden").await.len(), 1);
    check_index(&app).await;
}
