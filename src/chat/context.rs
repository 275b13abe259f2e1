//! Trimming a conversation's history to the token budget of one LLM request, by the
//! estimates of [`crate::chat::llm::tokens`].

use super::llm::tokens::estimate_turn_tokens;
use super::llm::{ChatRole, ChatTurn};

/// Builds the messages of one LLM request from a conversation's history.
///
/// - The system message (when given and not blank) comes first and is always kept.
/// - The latest user turn is always kept, even if it alone exceeds the budget: dropping the
///   question being asked would make the request pointless.
/// - Then the newest turns are kept while they fit in `budget_tokens`; the first turn that
///   does not fit ends the walk, so the kept history is a contiguous recent window (skipping
///   one long message to keep an older short one would give the model a history with a hole).
///
/// `history` is chronological and the result is too.
pub fn build_context(
    system_message: Option<&str>,
    history: Vec<ChatTurn>,
    budget_tokens: usize,
) -> Vec<ChatTurn> {
    let system = system_message
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| ChatTurn::new(ChatRole::System, s));
    let latest_user = history.iter().rposition(|t| t.role == ChatRole::User);

    let mut used = system.as_ref().map_or(0, estimate_turn_tokens);
    if let Some(i) = latest_user {
        used += estimate_turn_tokens(&history[i]);
    }

    // Walk from the newest turn back; `keep[i]` marks the turns that go into the request.
    let mut keep = vec![false; history.len()];
    if let Some(i) = latest_user {
        keep[i] = true;
    }
    for (i, turn) in history.iter().enumerate().rev() {
        if Some(i) == latest_user {
            continue;
        }
        let cost = estimate_turn_tokens(turn);
        if used + cost > budget_tokens {
            break;
        }
        used += cost;
        keep[i] = true;
    }

    system
        .into_iter()
        .chain(
            history
                .into_iter()
                .zip(keep)
                .filter(|(_, kept)| *kept)
                .map(|(turn, _)| turn),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> ChatTurn {
        ChatTurn::new(ChatRole::User, s)
    }

    fn assistant(s: &str) -> ChatTurn {
        ChatTurn::new(ChatRole::Assistant, s)
    }

    fn contents(turns: &[ChatTurn]) -> Vec<&str> {
        turns.iter().map(|t| t.content.as_str()).collect()
    }

    #[test]
    fn everything_fits_in_a_large_budget() {
        let history = vec![user("hi"), assistant("hello"), user("how are you?")];
        let context = build_context(Some("Be brief."), history.clone(), 10_000);
        assert_eq!(context.len(), 4);
        assert_eq!(context[0].role, ChatRole::System);
        assert_eq!(
            contents(&context),
            ["Be brief.", "hi", "hello", "how are you?"]
        );
    }

    #[test]
    fn oldest_turns_are_dropped_first() {
        // Each turn costs 1 + 4 = 5 tokens; the system message costs 5 too.
        let history = vec![
            user("u1"),
            assistant("a1"),
            user("u2"),
            assistant("a2"),
            user("u3"),
        ];
        let context = build_context(Some("sys"), history.clone(), 5 + 3 * 5);
        assert_eq!(contents(&context), ["sys", "u2", "a2", "u3"]);
    }

    #[test]
    fn latest_user_turn_is_kept_even_over_budget() {
        let long = "x".repeat(1_000);
        let history = vec![user("old"), assistant("reply"), user(&long)];
        let context = build_context(Some("sys"), history.clone(), 10);
        assert_eq!(context.len(), 2);
        assert_eq!(context[0].content, "sys");
        assert_eq!(context[1].content, long);
    }

    #[test]
    fn the_window_is_contiguous() {
        // A long assistant turn that does not fit stops the walk: the short turn before it
        // is not kept, so the model never sees a history with a hole.
        let long = "y".repeat(400);
        let history = vec![user("short"), assistant(&long), user("question")];
        let context = build_context(None, history.clone(), 30);
        assert_eq!(contents(&context), ["question"]);
    }

    #[test]
    fn blank_or_missing_system_message_is_left_out() {
        let history = vec![user("hi")];
        assert_eq!(contents(&build_context(None, history.clone(), 100)), ["hi"]);
        assert_eq!(
            contents(&build_context(Some("  "), history.clone(), 100)),
            ["hi"]
        );
    }

    #[test]
    fn assistant_turns_after_the_latest_user_turn_are_kept_when_they_fit() {
        let history = vec![user("q"), assistant("partial answer")];
        let context = build_context(None, history.clone(), 100);
        assert_eq!(contents(&context), ["q", "partial answer"]);
    }

    #[test]
    fn empty_history_gives_just_the_system_message() {
        let context = build_context(Some("sys"), Vec::new(), 100);
        assert_eq!(contents(&context), ["sys"]);
        assert!(build_context(None, Vec::new(), 100).is_empty());
    }
}
