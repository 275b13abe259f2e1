//! The tools cache: each server's tool list, per URL and credentials, kept for
//! `tools_cache` so that a turn does not list every server again.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::connect::Target;

/// One tool as its server listed it.
#[derive(Debug, Clone)]
pub(crate) struct ListedTool {
    /// The server's own name for it.
    pub name: String,
    /// What it does.
    pub description: Option<String>,
    /// A JSON Schema object for its arguments.
    pub input_schema: serde_json::Value,
}

/// A server's tool list, shared by the turns that read it.
pub(crate) type ToolList = Arc<Vec<ListedTool>>;

/// Tool lists by target, each with the time it expires.
pub(crate) struct ToolsCache {
    ttl: Duration,
    entries: Mutex<HashMap<Target, (Instant, ToolList)>>,
}

impl ToolsCache {
    /// A cache keeping lists for `ttl` (zero keeps nothing).
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
    }

    /// The list of this target if it was stored less than `ttl` ago.
    pub(crate) fn get(&self, target: &Target) -> Option<ToolList> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(target)
            .filter(|(expires, _)| *expires > Instant::now())
            .map(|(_, tools)| Arc::clone(tools))
    }

    /// Stores a list, dropping the lists that expired.
    pub(crate) fn put(&self, target: Target, tools: ToolList) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (expires, _)| *expires > now);
        entries.insert(target, (now + self.ttl, tools));
    }
}
