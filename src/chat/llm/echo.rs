//! The offline provider: answers without any network, so the service runs with no API key.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use super::tokens::estimate_usage;
use super::{ChatRole, CompletionRequest, LlmError, LlmEvent, LlmProvider, LlmStream, Purpose};

/// Words of the user's first message that make an echoed title.
const TITLE_WORDS: usize = 6;

/// Replies `Echo: <last user message>`, streamed in word-sized deltas, with an estimated
/// [`Usage`](super::Usage); a title request gets the first words of the conversation's first user message.
/// Deterministic, so tests can assert on its output.
#[derive(Debug, Clone, Default)]
pub struct EchoProvider {
    chunk_delay: Duration,
}

impl EchoProvider {
    /// An echo provider that streams its deltas without waiting.
    pub fn new() -> Self {
        Self::default()
    }

    /// An echo provider that waits `delay` before each delta, to imitate a real model's pace
    /// (useful to watch streaming or to test stopping a generation).
    pub fn with_chunk_delay(delay: Duration) -> Self {
        Self { chunk_delay: delay }
    }

    /// The reply to a request: the last user message, prefixed; for a title, the first words
    /// of the first user message.
    pub fn reply_to(request: &CompletionRequest) -> String {
        if request.purpose == Purpose::Title {
            let first_user = request.messages.iter().find(|t| t.role == ChatRole::User);
            let words = first_user
                .map_or("", |t| t.content.as_str())
                .split_whitespace();
            return words.take(TITLE_WORDS).collect::<Vec<_>>().join(" ");
        }
        let last_user = request
            .messages
            .iter()
            .rev()
            .find(|t| t.role == ChatRole::User)
            .map_or("", |t| t.content.as_str());
        format!("Echo: {last_user}")
    }
}

#[async_trait]
impl LlmProvider for EchoProvider {
    fn name(&self) -> &'static str {
        "echo"
    }

    async fn stream(&self, request: &CompletionRequest) -> Result<LlmStream, LlmError> {
        let reply = Self::reply_to(request);
        // Estimated, as no model counted them.
        let usage = estimate_usage(&request.messages, reply.chars().count());

        // Word-sized pieces that keep their trailing whitespace, so joining them gives back
        // the reply exactly.
        let events: Vec<LlmEvent> = reply
            .split_inclusive(char::is_whitespace)
            .map(|piece| LlmEvent::Delta(piece.to_owned()))
            .chain([
                LlmEvent::Finished("stop".to_owned()),
                LlmEvent::Usage(usage),
            ])
            .collect();

        let delay = self.chunk_delay;
        let stream = futures::stream::iter(events).then(move |event| async move {
            if !delay.is_zero() && matches!(event, LlmEvent::Delta(_)) {
                tokio::time::sleep(delay).await;
            }
            Ok(event)
        });
        Ok(stream.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::llm::{collect, ChatTurn};

    fn request(messages: Vec<ChatTurn>) -> CompletionRequest {
        CompletionRequest {
            model: "any".to_owned(),
            messages,
            ..CompletionRequest::default()
        }
    }

    #[tokio::test]
    async fn echoes_the_last_user_message_in_word_deltas() {
        let provider = EchoProvider::new();
        let req = request(vec![
            ChatTurn::new(ChatRole::System, "be nice"),
            ChatTurn::new(ChatRole::User, "first"),
            ChatTurn::new(ChatRole::Assistant, "Echo: first"),
            ChatTurn::new(ChatRole::User, "hello there world"),
        ]);
        let events: Vec<_> = provider.stream(&req).await.unwrap().collect().await;
        let deltas: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                Ok(LlmEvent::Delta(d)) => Some(d.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(deltas, ["Echo: ", "hello ", "there ", "world"]);

        let completion = collect(provider.stream(&req).await.unwrap()).await.unwrap();
        assert_eq!(completion.text, "Echo: hello there world");
        let usage = completion.usage.unwrap();
        assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
        assert!(usage.estimated);
        assert_eq!(
            usage.total_tokens,
            usage.prompt_tokens + usage.completion_tokens
        );
    }

    #[tokio::test]
    async fn a_title_is_the_first_words_of_the_first_user_message() {
        let mut req = request(vec![
            ChatTurn::new(ChatRole::System, "write a title"),
            ChatTurn::new(ChatRole::User, "  how do\tI bake bread at home quickly?"),
            ChatTurn::new(ChatRole::Assistant, "Echo: how do I bake"),
            ChatTurn::new(ChatRole::User, "the title, please"),
        ]);
        req.purpose = Purpose::Title;
        let completion = EchoProvider::new().complete(&req).await.unwrap();
        assert_eq!(completion.text, "how do I bake bread at");
        assert!(completion.usage.is_some());
    }

    #[tokio::test]
    async fn answers_without_a_user_message() {
        let provider = EchoProvider::with_chunk_delay(Duration::from_millis(1));
        let completion = provider.complete(&request(vec![])).await.unwrap();
        assert_eq!(completion.text, "Echo: ");
        assert_eq!(provider.name(), "echo");
    }
}
