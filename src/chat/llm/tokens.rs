//! Token estimates.
//!
//! The service talks to many OpenAI-compatible servers whose tokenizers differ, so an exact
//! count for one model would be wrong for the others. The heuristic is the usual rule of
//! thumb for English text with BPE tokenizers: about four characters per token, plus a fixed
//! overhead per message for the role and separators that the chat template adds. It errs
//! slightly high for English and low for some scripts, so the budget should leave headroom
//! below the model's real context window.

use super::{ChatTurn, Usage};

/// Characters per token assumed by the estimate.
const CHARS_PER_TOKEN: usize = 4;

/// Tokens added per message for the role marker and separators of the chat template.
pub const MESSAGE_OVERHEAD_TOKENS: usize = 4;

/// Estimated tokens of a piece of text: its characters divided by four, rounded up.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(CHARS_PER_TOKEN)
}

/// Estimated tokens of one message, including its per-message overhead.
pub fn estimate_turn_tokens(turn: &ChatTurn) -> usize {
    estimate_tokens(&turn.content) + MESSAGE_OVERHEAD_TOKENS
}

/// Estimated tokens of a list of messages.
pub fn estimate_turns_tokens(turns: &[ChatTurn]) -> usize {
    turns.iter().map(estimate_turn_tokens).sum()
}

/// The estimated usage of a request of `turns` answered with `completion_chars` characters
/// (text and tool-call arguments): for providers that report none, and for replies cut
/// before the provider's report.
pub fn estimate_usage(turns: &[ChatTurn], completion_chars: usize) -> Usage {
    let saturate = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let prompt_tokens = saturate(estimate_turns_tokens(turns));
    let completion_tokens = saturate(completion_chars.div_ceil(CHARS_PER_TOKEN));
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens.saturating_add(completion_tokens),
        estimated: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::llm::ChatRole;

    fn user(s: &str) -> ChatTurn {
        ChatTurn::new(ChatRole::User, s)
    }

    #[test]
    fn estimate_is_chars_over_four_rounded_up() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abc"), 1);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        // Characters, not bytes: multi-byte text is not over-counted.
        assert_eq!(estimate_tokens("éééé"), 1);
        assert_eq!(
            estimate_turn_tokens(&user("abcd")),
            1 + MESSAGE_OVERHEAD_TOKENS
        );
    }
}
