//! `GET /api/v1/search` on both backends: the query language, ranking, snippets and their
//! highlight ranges, filters, what deletes take out of the index, hostile queries, and who may
//! search whose messages; on SQLite, the queue of messages waiting to be indexed.

use serde_json::{json, Value};
use sqlx::{Connection, Executor};

use crate::helpers::{
    eventually, spawn_app, spawn_app_with, TestApp, TestOptions, TestResponse, PATIENCE,
};
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
    a_message_is_found_as_soon_as_it_is_stored,
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
    // More matches than a search ranks (1,000): the older ones follow by time.
    store_numbered(&app, &conversation, "needle", 1003).await;
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

/// Stores `count` messages `{word} number {i}` (at times 1 to `count`) in the conversation
/// with public ID `conversation` with one statement, beside the server.
async fn store_numbered(app: &TestApp, conversation: &str, word: &str, count: i64) {
    let key = app.state.ids.conversation.decode(conversation).unwrap();
    execute(
        app,
        &format!(
            "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}) \
             INSERT INTO messages (conversation_id, role, content, timestamp, updated_at) \
             SELECT {key}, 'user', '{word} number ' || i, i, i FROM n"
        ),
    )
    .await;
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
    let app = stored_before(database, "0007").await;
    let alice = app.token("alice", &["user"]);
    let hits = hits(&app, &alice, "elan").await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["snippet"], "an élan from before");
    assert_eq!(self::hits(&app, &alice, "olden").await.len(), 1);
    check_index(&app).await;
}

/// The app on a database that held a user, a conversation and a message before the migration
/// `before` (those before it applied then).
async fn stored_before(database: TestDatabase, before: &str) -> TestApp {
    let url = database.url().to_owned();
    let sqlite = url.starts_with("sqlite:");
    // The migrations before `before`, as a folder of their own.
    let dialect = if sqlite { "sqlite" } else { "postgres" };
    let folder = tempfile::tempdir().unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dialect);
    for entry in std::fs::read_dir(source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < before {
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
    spawn_app_with(TestOptions::new().database(database)).await
}

/// Messages indexed before the search queue stay in the index as they were: the queue starts
/// empty, and one of them deleted or edited afterwards leaves the index exact.
#[tokio::test]
async fn messages_indexed_before_the_queue_stay_exact_on_sqlite() {
    let app = stored_before(TestDatabase::sqlite(), "0009").await;
    assert_eq!(queued(&app).await, 0);
    let alice = app.token("alice", &["user"]);
    assert_eq!(found(&app, &alice, "elan").await, ["an élan from before"]);
    check_index_exactly(&app, &alice).await;
    execute(
        &app,
        "UPDATE messages SET content = 'an élan renewed' WHERE id = 1",
    )
    .await;
    assert_eq!(found(&app, &alice, "renewed").await, ["an élan renewed"]);
    check_index_exactly(&app, &alice).await;
    execute(&app, "DELETE FROM messages WHERE id = 1").await;
    assert!(found(&app, &alice, "elan").await.is_empty());
    check_index_exactly(&app, &alice).await;
}

async fn a_message_is_found_as_soon_as_it_is_stored(app: TestApp) {
    let alice = app.token("alice", &["user"]);
    let conversation = app.new_conversation(&alice).await;
    for i in 0..20 {
        let sent = app
            .say(&alice, &conversation, "user", &format!("fresh word{i}"))
            .await;
        let found = hits(&app, &alice, &format!("word{i}")).await;
        assert_eq!(found.len(), 1, "message {i}");
        assert_eq!(found[0]["message_id"], sent["id"]);
        assert_eq!(hits(&app, &alice, "fresh").await.len(), i + 1);
    }
}

/// A connection of the test's own to the app's SQLite database.
async fn sqlite(app: &TestApp) -> sqlx::SqliteConnection {
    let mut connection = sqlx::SqliteConnection::connect(&app.database_url())
        .await
        .unwrap();
    connection
        .execute("PRAGMA foreign_keys = ON")
        .await
        .unwrap();
    connection
}

/// A number that `sql` answers on the app's SQLite database.
async fn number(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&mut sqlite(app).await)
        .await
        .unwrap()
}

/// How many messages wait to be indexed.
async fn queued(app: &TestApp) -> i64 {
    number(app, "SELECT COUNT(*) FROM messages_search_queue").await
}

/// A query answering 1 when the index holds `word` for the message `key` (reading a row of an
/// external-content table by its key reads the content, not the index: a match reads the
/// index).
fn indexed(word: &str, key: i64) -> String {
    format!(
        "SELECT COUNT(*) FROM messages_search WHERE messages_search MATCH '{word}' \
         AND rowid = {key}"
    )
}

/// Stores a message of the conversation with public ID `conversation` through SQL, as the
/// server does (the triggers queue it); answers its key.
async fn insert(
    connection: &mut sqlx::SqliteConnection,
    app: &TestApp,
    conversation: &str,
    content: &str,
) -> i64 {
    let key = app.state.ids.conversation.decode(conversation).unwrap();
    sqlx::query_scalar(
        "INSERT INTO messages (conversation_id, role, content, timestamp, updated_at) \
         VALUES (?, 'user', ?, 0, 0) RETURNING id",
    )
    .bind(key)
    .bind(content)
    .fetch_one(connection)
    .await
    .unwrap()
}

/// Indexes the queue through a search as `token`, then checks with FTS5 that the indexes hold
/// exactly what their content says: every message and title of an owned conversation, with
/// the values it has now, and nothing else.
async fn check_index_exactly(app: &TestApp, token: &str) {
    hits(app, token, "anything").await;
    assert_eq!(queued(app).await, 0, "a search indexes the whole queue");
    check_index(app).await;
    execute(
        app,
        "INSERT INTO messages_search (messages_search, rank) VALUES ('integrity-check', 1)",
    )
    .await;
    execute(
        app,
        "INSERT INTO conversations_search (conversations_search, rank) \
         VALUES ('integrity-check', 1)",
    )
    .await;
}

/// A new message is queued, not indexed, by the write that stores it; the background task
/// indexes it without a search.
#[tokio::test]
async fn a_stored_message_is_queued_then_indexed_in_the_background() {
    let app = spawn_app().await;
    let alice = app.token("alice", &["user"]);
    let conversation = app.new_conversation(&alice).await;
    let mut connection = sqlite(&app).await;
    connection.execute("BEGIN IMMEDIATE").await.unwrap();
    let key = insert(&mut connection, &app, &conversation, "queued words").await;
    let in_queue: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM messages_search_queue WHERE id = ?")
            .bind(key)
            .fetch_one(&mut connection)
            .await
            .unwrap();
    assert_eq!(in_queue, 1, "the insert queues the message");
    let in_index: i64 = sqlx::query_scalar(&indexed("queued", key))
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(in_index, 0, "the insert does not index the message");
    connection.execute("COMMIT").await.unwrap();

    // A message stored through the server wakes the task, which indexes both.
    let sent = app
        .say(&alice, &conversation, "user", "background words")
        .await;
    let sent = app
        .state
        .ids
        .message
        .decode(sent["id"].as_str().unwrap())
        .unwrap();
    eventually("the queue is indexed", PATIENCE, || async {
        queued(&app).await == 0
    })
    .await;
    assert_eq!(number(&app, &indexed("queued", key)).await, 1);
    assert_eq!(number(&app, &indexed("background", sent)).await, 1);
    check_index_exactly(&app, &alice).await;
    assert_eq!(found(&app, &alice, "words").await.len(), 2);
}

/// A message deleted before it was indexed leaves the queue and is never found; the index stays
/// whole.
#[tokio::test]
async fn a_message_deleted_before_it_is_indexed_is_never_found() {
    let app = spawn_app().await;
    let alice = app.token("alice", &["user"]);
    let conversation = app.new_conversation(&alice).await;
    app.say(&alice, &conversation, "user", "kept walrus").await;
    assert_eq!(found(&app, &alice, "walrus").await.len(), 1);

    let mut connection = sqlite(&app).await;
    connection.execute("BEGIN IMMEDIATE").await.unwrap();
    let key = insert(&mut connection, &app, &conversation, "doomed walrus").await;
    sqlx::query("DELETE FROM messages WHERE id = ?")
        .bind(key)
        .execute(&mut connection)
        .await
        .unwrap();
    connection.execute("COMMIT").await.unwrap();
    assert_eq!(queued(&app).await, 0, "the deleted message left the queue");
    assert_eq!(found(&app, &alice, "walrus").await, ["kept walrus"]);
    check_index_exactly(&app, &alice).await;

    // The same through the API, most likely before the task has indexed it.
    let doomed = app
        .say(&alice, &conversation, "user", "another walrus")
        .await;
    let path = format!(
        "/api/v1/conversations/{conversation}/messages/{}",
        doomed["id"].as_str().unwrap()
    );
    app.delete(&path, &alice).await.assert_status(204);
    assert_eq!(found(&app, &alice, "walrus").await, ["kept walrus"]);
    check_index_exactly(&app, &alice).await;
}

/// A conversation deleted with messages indexed and queued takes them all out of the index and
/// the queue.
#[tokio::test]
async fn a_conversation_deleted_with_queued_messages_leaves_nothing() {
    let app = spawn_app().await;
    let alice = app.token("alice", &["user"]);
    let kept = app.new_conversation(&alice).await;
    let gone = app.new_conversation(&alice).await;
    app.say(&alice, &kept, "user", "otter kept").await;
    app.say(&alice, &gone, "user", "otter indexed").await;
    assert_eq!(found(&app, &alice, "otter").await.len(), 2);

    let mut connection = sqlite(&app).await;
    connection.execute("BEGIN IMMEDIATE").await.unwrap();
    for i in 0..3 {
        insert(&mut connection, &app, &gone, &format!("otter queued {i}")).await;
    }
    let key = app.state.ids.conversation.decode(&gone).unwrap();
    sqlx::query("DELETE FROM conversations WHERE id = ?")
        .bind(key)
        .execute(&mut connection)
        .await
        .unwrap();
    connection.execute("COMMIT").await.unwrap();
    assert_eq!(queued(&app).await, 0);
    assert_eq!(found(&app, &alice, "otter").await, ["otter kept"]);
    check_index_exactly(&app, &alice).await;

    // And through the API, with a message that is most likely still queued.
    app.say(&alice, &kept, "user", "otter late").await;
    app.delete(&format!("/api/v1/users/me/conversations/{kept}"), &alice)
        .await
        .assert_status(200);
    assert!(found(&app, &alice, "otter").await.is_empty());
    check_index_exactly(&app, &alice).await;
}

/// A queue longer than one batch is indexed whole before a search reads.
#[tokio::test]
async fn a_backlog_longer_than_a_batch_is_indexed_before_a_search() {
    let app = spawn_app().await;
    let alice = app.token("alice", &["user"]);
    let conversation = app.new_conversation(&alice).await;
    store_numbered(&app, &conversation, "heron", 2500).await;
    let response = search(&app, &alice, &[("q", "heron")]).await;
    response.assert_status(200);
    assert_eq!(response.total(), 2500);
    let last = search(&app, &alice, &[("q", "2500")]).await;
    assert_eq!(last.json()[0]["snippet"], "heron number 2500");
    check_index_exactly(&app, &alice).await;
}

/// Edits of indexed and queued messages, and a conversation that changes owner, keep the index
/// exact.
#[tokio::test]
async fn edits_and_new_owners_keep_the_index_exact() {
    let app = spawn_app().await;
    let alice = app.token("alice", &["user"]);
    let bob = app.token("bob", &["user"]);
    app.me(&bob).await;
    let conversation = app.new_conversation(&alice).await;
    let indexed = app.say(&alice, &conversation, "user", "old lynx").await;
    let indexed = app
        .state
        .ids
        .message
        .decode(indexed["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(found(&app, &alice, "lynx").await.len(), 1);

    let edit = |key: i64, content: &'static str| {
        format!("UPDATE messages SET content = '{content}' WHERE id = {key}")
    };
    let mut connection = sqlite(&app).await;
    connection.execute("BEGIN IMMEDIATE").await.unwrap();
    let queued_key = insert(&mut connection, &app, &conversation, "old puma").await;
    connection
        .execute(&*edit(indexed, "new lynx"))
        .await
        .unwrap();
    connection
        .execute(&*edit(queued_key, "new puma"))
        .await
        .unwrap();
    connection.execute("COMMIT").await.unwrap();
    assert!(found(&app, &alice, "old").await.is_empty());
    assert_eq!(
        sorted(found(&app, &alice, "new").await),
        ["new lynx", "new puma"]
    );
    check_index_exactly(&app, &alice).await;

    // A new owner, with one message indexed and one queued: theirs now.
    let key = app.state.ids.conversation.decode(&conversation).unwrap();
    let give = |owner: &str| format!("UPDATE conversations SET user_id = {owner} WHERE id = {key}");
    let bob_key = "(SELECT id FROM users WHERE username = 'bob')";
    connection.execute("BEGIN IMMEDIATE").await.unwrap();
    insert(&mut connection, &app, &conversation, "new cougar").await;
    connection.execute(&*give(bob_key)).await.unwrap();
    connection.execute("COMMIT").await.unwrap();
    assert!(found(&app, &alice, "new").await.is_empty());
    assert_eq!(found(&app, &bob, "new").await.len(), 3);
    check_index_exactly(&app, &bob).await;

    // Nobody's, then alice's again.
    connection.execute("BEGIN IMMEDIATE").await.unwrap();
    insert(&mut connection, &app, &conversation, "new ocelot").await;
    connection.execute(&*give("NULL")).await.unwrap();
    connection.execute("COMMIT").await.unwrap();
    assert!(found(&app, &bob, "new").await.is_empty());
    check_index_exactly(&app, &bob).await;
    let alice_key = "(SELECT id FROM users WHERE username = 'alice')";
    execute(&app, &give(alice_key)).await;
    assert_eq!(found(&app, &alice, "new").await.len(), 4);
    check_index_exactly(&app, &alice).await;
}
