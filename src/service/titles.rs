//! Titles that write themselves: after a conversation's first reply, one still called
//! [`DEFAULT_TITLE`] (or nothing) is named by the LLM from its first exchange. The title is
//! asked for in the background once the reply has been answered, so it never delays it; a
//! failing or slow request leaves the title as it was, and a title the user set before or
//! while it was written is kept (the store's update is conditional).

use std::sync::Arc;
use std::time::Instant;

use crate::chat::events::{Exchange, LiveEvent};
use crate::chat::llm::{ChatRole, ChatTurn, CompletionRequest, LlmError, Purpose};
use crate::config::TitleSettings;
use crate::db::{Conversation, MessageRole, Scope, TurnContext, DEFAULT_TITLE};
use crate::metrics;
use crate::service::usage::{self, CallKind, LlmCall};
use crate::state::AppState;

/// Longest title written by the LLM, in characters.
pub const MAX_TITLE_CHARS: usize = 60;

/// Tokens the title's reply may take: a few words, with room for a model that adds some.
const TITLE_MAX_TOKENS: u32 = 48;

/// Characters of each side of the first exchange sent to write the title from.
const EXCHANGE_CHARS: usize = 2000;

/// What the model is told to do.
const INSTRUCTIONS: &str = "You name conversations. Answer with a short title for the \
     conversation (at most six words, in the language of the conversation) and nothing else: \
     no quotes, no final punctuation.";

/// The request after the exchange.
const ASK: &str = "Write the title of this conversation.";

/// Whether a turn's reply earns its conversation a title: titles are on, the conversation has
/// no title of its own, and the turn's history holds no earlier reply.
pub fn wanted(settings: &TitleSettings, context: &TurnContext) -> bool {
    settings.auto_title
        && is_untitled(&context.conversation.title)
        && !context
            .history
            .iter()
            .any(|m| m.role == MessageRole::Assistant)
}

/// Whether a title is the one a conversation gets when none is given.
fn is_untitled(title: &str) -> bool {
    title.is_empty() || title == DEFAULT_TITLE
}

/// Starts writing the title of `conversation` from its first exchange, in the background
/// (tracked with the replies; a shutdown abandons it).
pub fn spawn(state: &AppState, conversation: &Conversation, exchange: &Exchange) {
    let model = state
        .settings
        .titles
        .title_model
        .clone()
        .or_else(|| conversation.model.clone())
        .unwrap_or_else(|| state.settings.llm.model.clone());
    let request = request(
        model,
        &exchange.user_message.content,
        &exchange.ai_message.content,
    );
    let scope = conversation.user_id.map_or(Scope::Anonymous, Scope::Owner);
    let task = write(
        state.clone(),
        scope,
        conversation.user_id,
        conversation.id,
        request,
    );
    state.hub.tasks.spawn(task);
}

/// The request for a title: the instructions, the first exchange (each side cut to
/// [`EXCHANGE_CHARS`]; a reply stopped before any text is left out), and the ask.
fn request(model: String, user: &str, reply: &str) -> CompletionRequest {
    let mut messages = vec![
        ChatTurn::new(ChatRole::System, INSTRUCTIONS),
        ChatTurn::new(ChatRole::User, cut(user, EXCHANGE_CHARS)),
    ];
    if !reply.trim().is_empty() {
        messages.push(ChatTurn::new(
            ChatRole::Assistant,
            cut(reply, EXCHANGE_CHARS),
        ));
    }
    messages.push(ChatTurn::new(ChatRole::User, ASK));
    CompletionRequest {
        model,
        messages,
        tools: Vec::new(),
        max_tokens: Some(TITLE_MAX_TOKENS),
        purpose: Purpose::Title,
        options: Default::default(),
    }
}

/// Asks for the title within `OPENAI_TIMEOUT_SECONDS`, stores it if the conversation is still
/// untitled, and tells its members. The call's tokens count against the conversation's owner.
async fn write(
    state: AppState,
    scope: Scope,
    owner: Option<i64>,
    conversation: i64,
    request: CompletionRequest,
) {
    let started = Instant::now();
    let bound = state.settings.llm.timeout;
    // A stopping service does not wait for a title: it is left as it is.
    let asked = tokio::select! {
        biased;
        () = state.shutdown.cancelled() => return,
        () = state.hub.interrupt.cancelled() => return,
        asked = tokio::time::timeout(bound, state.llm.complete(&request)) => {
            asked.unwrap_or(Err(LlmError::Timeout))
        }
    };
    metrics::llm_request(started.elapsed());
    let completion = match asked {
        Ok(completion) => completion,
        Err(err) => {
            metrics::llm_error(err.code());
            tracing::warn!(error = %err, "writing a conversation's title failed; it keeps its title");
            return;
        }
    };
    // Recorded with every other LLM call.
    if let Some(reported) = completion.usage {
        let call = LlmCall {
            model: request.model.clone(),
            kind: CallKind::Title,
            usage: reported,
        };
        usage::record(&state, owner, Some(conversation), &[call]).await;
    }
    let Some(title) = clean(&completion.text) else {
        tracing::warn!("the LLM wrote an empty title; the conversation keeps its title");
        return;
    };
    match state
        .store
        .title_if_untitled(scope, conversation, &title)
        .await
    {
        Ok(Some(titled)) => state.hub.live.publish(
            LiveEvent::Retitled {
                conversation,
                title: Arc::from(titled.title),
            },
            None,
        ),
        // Renamed by the user in the meantime, or deleted: theirs wins.
        Ok(None) => {}
        Err(err) => tracing::error!(error = ?err, "storing a conversation's title failed"),
    }
}

/// A title from what the model wrote: its first line, without a `Title:` label, quotes,
/// Markdown emphasis or final punctuation, spaces collapsed, cut at a word to at most
/// [`MAX_TITLE_CHARS`]; `None` when nothing is left.
pub fn clean(text: &str) -> Option<String> {
    const QUOTES: &[char] = &['"', '\'', '`', '*', '“', '”', '‘', '’', '«', '»'];
    const FINAL: &[char] = &['.', '!', '?', ',', ';', ':', '…', '。', '-', '–', '—'];
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let line = ["title:", "title -"]
        .iter()
        .find_map(|label| {
            line.get(..label.len())
                .filter(|head| head.eq_ignore_ascii_case(label))
                .map(|_| &line[label.len()..])
        })
        .unwrap_or(line);
    // A Markdown heading's marks.
    let line = line.trim_start_matches('#');
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut title = words.join(" ");
    title = trim(&title, QUOTES, FINAL);
    if title.chars().count() > MAX_TITLE_CHARS {
        let cut_at = title
            .char_indices()
            .nth(MAX_TITLE_CHARS)
            .map_or(title.len(), |(i, _)| i);
        let head = &title[..cut_at];
        // At the last space, unless that leaves too little.
        let head = match head.rfind(' ') {
            Some(space) if space >= MAX_TITLE_CHARS / 2 => &head[..space],
            _ => head,
        };
        title = trim(head, QUOTES, FINAL);
    }
    (!title.is_empty()).then_some(title)
}

/// Trims spaces and quotes at both ends, and final punctuation at the end, until none is
/// left.
fn trim(text: &str, quotes: &[char], finals: &[char]) -> String {
    let mut text = text;
    loop {
        let trimmed = text
            .trim()
            .trim_matches(quotes)
            .trim_end_matches(finals)
            .trim();
        if trimmed == text {
            return trimmed.to_owned();
        }
        text = trimmed;
    }
}

/// The first `max` characters of `text`.
fn cut(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_cleaned_and_bounded() {
        let cases = [
            ("Baking Bread at Home", Some("Baking Bread at Home")),
            ("\"Baking Bread at Home.\"", Some("Baking Bread at Home")),
            (
                "Title: “Rust lifetimes explained”!",
                Some("Rust lifetimes explained"),
            ),
            ("**Bold title**\n\nThe rest is ignored.", Some("Bold title")),
            ("\n\n  spaced    out\ttitle  \n", Some("spaced out title")),
            ("'Why?'", Some("Why")),
            ("C++ templates", Some("C++ templates")),
            ("## Learning C#", Some("Learning C#")),
            ("...", None),
            ("", None),
            ("\"\"", None),
        ];
        for (text, expected) in cases {
            assert_eq!(clean(text).as_deref(), expected, "{text:?}");
        }
        let long = "word ".repeat(40);
        let title = clean(&long).unwrap();
        assert!(title.chars().count() <= MAX_TITLE_CHARS, "{title}");
        assert!(title.ends_with("word"), "{title}");
        let unbroken = "x".repeat(200);
        assert_eq!(clean(&unbroken).unwrap().chars().count(), MAX_TITLE_CHARS);
        let wide = "日本語のタイトル".repeat(20);
        assert_eq!(clean(&wide).unwrap().chars().count(), MAX_TITLE_CHARS);
    }

    #[test]
    fn the_request_asks_for_a_short_title_from_the_first_exchange() {
        let long = "a".repeat(EXCHANGE_CHARS + 10);
        let request = request("small".to_owned(), &long, "the reply");
        assert_eq!(request.model, "small");
        assert_eq!(request.purpose, Purpose::Title);
        assert_eq!(request.max_tokens, Some(TITLE_MAX_TOKENS));
        assert!(request.tools.is_empty());
        let roles: Vec<ChatRole> = request.messages.iter().map(|t| t.role).collect();
        assert_eq!(
            roles,
            [
                ChatRole::System,
                ChatRole::User,
                ChatRole::Assistant,
                ChatRole::User
            ]
        );
        assert_eq!(request.messages[1].content.len(), EXCHANGE_CHARS);
        assert_eq!(request.messages[2].content, "the reply");

        let unanswered = super::request("m".to_owned(), "hello", " ");
        let roles: Vec<ChatRole> = unanswered.messages.iter().map(|t| t.role).collect();
        assert_eq!(roles, [ChatRole::System, ChatRole::User, ChatRole::User]);
    }
}
