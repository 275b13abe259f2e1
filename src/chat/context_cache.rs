//! The context of each conversation's latest turn, kept after the turn, so the next turn can
//! ask the LLM at once instead of after its read of the database. It is a prediction: the
//! turn still reads, alongside the request, and checks the prediction before any chunk goes
//! out (see `service::chat`), so a change made elsewhere (another instance, a stored message, a
//! deletion) costs a second request, never a wrong reply.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::db::{Scope, TurnContext};

/// Text kept at most, in bytes of message content and the conversation's own text (plus a
/// fixed share per message); past it, entries are dropped to make room.
const BUDGET_BYTES: usize = 64 * 1024 * 1024;
/// What one kept message counts for beyond its text.
const MESSAGE_OVERHEAD: usize = 64;

/// Conversations' latest turn contexts, by conversation key, within a byte budget.
pub struct ContextCache {
    budget: usize,
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_conversation: HashMap<i64, (Arc<TurnContext>, usize)>,
    bytes: usize,
}

impl Entries {
    fn remove(&mut self, conversation: i64) {
        if let Some((_, size)) = self.by_conversation.remove(&conversation) {
            self.bytes -= size;
        }
    }
}

impl Default for ContextCache {
    fn default() -> Self {
        Self::new(BUDGET_BYTES)
    }
}

impl ContextCache {
    /// A cache that keeps up to `budget` bytes of text.
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            inner: Mutex::new(Entries::default()),
        }
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kept context of a conversation, if it is within the scope.
    pub fn get(&self, scope: Scope, conversation: i64) -> Option<Arc<TurnContext>> {
        let entries = self.entries();
        let (context, _) = entries.by_conversation.get(&conversation)?;
        let owner = context.conversation.user_id;
        let within = match scope {
            Scope::Owner(user) => owner == Some(user),
            Scope::Anonymous => owner.is_none(),
            Scope::Anyone => true,
        };
        within.then(|| context.clone())
    }

    /// Keeps a conversation's context, in place of the one kept before.
    pub fn put(&self, context: TurnContext) {
        let key = context.conversation.id;
        let size = Self::size(&context);
        let mut entries = self.entries();
        entries.remove(key);
        if size > self.budget {
            return;
        }
        while entries.bytes + size > self.budget {
            let Some(victim) = entries.by_conversation.keys().next().copied() else {
                break;
            };
            entries.remove(victim);
        }
        entries.bytes += size;
        entries
            .by_conversation
            .insert(key, (Arc::new(context), size));
    }

    /// What a context counts against the budget.
    fn size(context: &TurnContext) -> usize {
        let conversation = &context.conversation;
        let own_text = conversation.title.len()
            + conversation.system_message.as_ref().map_or(0, String::len)
            + conversation.model.as_ref().map_or(0, String::len)
            + conversation
                .context_metadata
                .as_ref()
                .map_or(0, |metadata| metadata.to_string().len());
        let history: usize = context
            .history
            .iter()
            .map(|m| m.content.len() + MESSAGE_OVERHEAD)
            .sum();
        own_text + history + MESSAGE_OVERHEAD
    }

    /// Forgets a conversation that changed or went away.
    pub fn forget(&self, conversation: i64) {
        self.entries().remove(conversation);
    }

    /// Forgets every conversation of a user who went away.
    pub fn forget_owner(&self, user: i64) {
        let mut entries = self.entries();
        let theirs: Vec<i64> = entries
            .by_conversation
            .iter()
            .filter(|(_, (context, _))| context.conversation.user_id == Some(user))
            .map(|(key, _)| *key)
            .collect();
        for key in theirs {
            entries.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Conversation, HistoryMessage, MessageRole};

    fn context(id: i64, owner: Option<i64>, text: &str) -> TurnContext {
        TurnContext {
            conversation: Conversation::for_tests(id, owner),
            history: vec![HistoryMessage {
                id: 1,
                role: MessageRole::User,
                content: text.to_owned(),
            }],
            has_tools: false,
        }
    }

    #[test]
    fn a_context_is_only_given_within_its_scope() {
        let cache = ContextCache::default();
        cache.put(context(1, Some(7), "mine"));
        cache.put(context(2, None, "anonymous"));
        assert!(cache.get(Scope::Owner(7), 1).is_some());
        assert!(cache.get(Scope::Anyone, 1).is_some());
        assert!(cache.get(Scope::Owner(8), 1).is_none());
        assert!(cache.get(Scope::Anonymous, 1).is_none());
        assert!(cache.get(Scope::Anonymous, 2).is_some());
        assert!(cache.get(Scope::Owner(7), 2).is_none());
        assert!(cache.get(Scope::Owner(7), 3).is_none());
    }

    #[test]
    fn forgetting_drops_a_conversation_or_all_of_an_owner() {
        let cache = ContextCache::default();
        cache.put(context(1, Some(7), "a"));
        cache.put(context(2, Some(7), "b"));
        cache.put(context(3, Some(8), "c"));
        cache.forget(1);
        assert!(cache.get(Scope::Anyone, 1).is_none());
        cache.forget_owner(7);
        assert!(cache.get(Scope::Anyone, 2).is_none());
        assert!(cache.get(Scope::Anyone, 3).is_some());
        let entries = cache.entries();
        assert_eq!(entries.bytes, entries.by_conversation[&3].1);
    }

    #[test]
    fn the_budget_holds() {
        let text = "x".repeat(1000);
        let one = 1000 + 2 * MESSAGE_OVERHEAD;
        let cache = ContextCache::new(3 * one);
        for id in 1..=10 {
            cache.put(context(id, None, &text));
            assert!(cache.entries().bytes <= 3 * one);
        }
        assert_eq!(cache.entries().by_conversation.len(), 3);
        assert!(cache.get(Scope::Anyone, 10).is_some(), "the newest is kept");
        // Putting a conversation again replaces it rather than counting it twice.
        cache.put(context(10, None, &text));
        assert_eq!(cache.entries().bytes, 3 * one);
        // A context larger than the whole budget is not kept.
        cache.put(context(11, None, &"y".repeat(4 * one)));
        assert!(cache.get(Scope::Anyone, 11).is_none());
        // The conversation's own text counts too.
        let mut long_system_message = context(12, None, "short");
        long_system_message.conversation.system_message = Some("z".repeat(4 * one));
        cache.put(long_system_message);
        assert!(cache.get(Scope::Anyone, 12).is_none());
    }
}
