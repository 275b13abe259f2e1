//! Tool calls assembled from their streamed pieces, within bounds.
//!
//! A server numbers the calls of a round with `tool_calls[].index`; the number is only a key
//! (kept in a map, never used to size anything), so any `u32` costs one entry. The calls of a
//! round and the characters of their arguments are bounded, because the whole call is held
//! until the round ends and is then sent back to the server in the next round.

use std::collections::BTreeMap;

use async_openai::types::ChatCompletionMessageToolCallChunk;

use super::ToolCall;

/// A bound the pieces went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Overflow {
    /// More calls than allowed in one round.
    TooManyCalls,
    /// More characters of arguments, all calls together, than allowed in one round.
    ArgumentsTooLong,
}

/// The calls of one round being assembled, by index.
#[derive(Debug)]
pub(super) struct ToolCalls {
    calls: BTreeMap<u32, ToolCall>,
    max_calls: usize,
    max_argument_chars: usize,
    argument_chars: usize,
}

impl ToolCalls {
    /// No calls yet; at most `max_calls` of them, with `max_argument_chars` of arguments.
    pub(super) fn new(max_calls: usize, max_argument_chars: usize) -> Self {
        Self {
            calls: BTreeMap::new(),
            max_calls,
            max_argument_chars,
            argument_chars: 0,
        }
    }

    /// Adds a streamed piece: the first piece of an index opens a call (and usually names
    /// it), later ones append to its arguments. A piece past a bound is not kept.
    pub(super) fn add(
        &mut self,
        piece: ChatCompletionMessageToolCallChunk,
    ) -> Result<(), Overflow> {
        if !self.calls.contains_key(&piece.index) && self.calls.len() >= self.max_calls {
            return Err(Overflow::TooManyCalls);
        }
        let arguments = piece.function.as_ref().and_then(|f| f.arguments.as_deref());
        self.argument_chars += arguments.map_or(0, |a| a.chars().count());
        if self.argument_chars > self.max_argument_chars {
            return Err(Overflow::ArgumentsTooLong);
        }
        let call = self.calls.entry(piece.index).or_insert_with(|| ToolCall {
            id: String::new(),
            name: String::new(),
            arguments: String::new(),
        });
        if let Some(id) = piece.id.filter(|id| !id.is_empty()) {
            call.id = id;
        }
        if let Some(function) = piece.function {
            if let Some(name) = function.name.filter(|n| !n.is_empty()) {
                call.name = name;
            }
            if let Some(arguments) = function.arguments {
                call.arguments.push_str(&arguments);
            }
        }
        Ok(())
    }

    /// The named calls in index order (a call the server gave no id gets one), leaving none.
    pub(super) fn take(&mut self) -> Vec<ToolCall> {
        self.argument_chars = 0;
        std::mem::take(&mut self.calls)
            .into_values()
            .filter(|call| !call.name.is_empty())
            .enumerate()
            .map(|(i, mut call)| {
                if call.id.is_empty() {
                    call.id = format!("call_{i}");
                }
                call
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use async_openai::types::FunctionCallStream;

    use super::*;

    fn piece(
        index: u32,
        name: Option<&str>,
        arguments: &str,
    ) -> ChatCompletionMessageToolCallChunk {
        ChatCompletionMessageToolCallChunk {
            index,
            id: name.map(|n| format!("id-{n}")),
            r#type: None,
            function: Some(FunctionCallStream {
                name: name.map(str::to_owned),
                arguments: Some(arguments.to_owned()),
            }),
        }
    }

    #[test]
    fn pieces_are_joined_by_index_in_index_order() {
        let mut calls = ToolCalls::new(4, 100);
        for p in [
            piece(u32::MAX, Some("last"), "{\"a\""),
            piece(5_000_000, Some("middle"), "{}"),
            piece(u32::MAX, None, ":1}"),
            piece(0, Some("first"), ""),
            piece(7, None, "nameless"),
        ] {
            calls.add(p).unwrap();
        }
        let taken = calls.take();
        let names: Vec<&str> = taken.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["first", "middle", "last"]);
        assert_eq!(taken[2].arguments, "{\"a\":1}");
        assert_eq!(taken[2].id, "id-last");
        assert!(calls.take().is_empty());
    }

    #[test]
    fn a_call_without_an_id_gets_one() {
        let mut calls = ToolCalls::new(4, 100);
        calls
            .add(ChatCompletionMessageToolCallChunk {
                id: None,
                ..piece(3, Some("x"), "{}")
            })
            .unwrap();
        assert_eq!(calls.take()[0].id, "call_0");
    }

    #[test]
    fn calls_past_the_bound_are_refused_whatever_their_index() {
        let mut calls = ToolCalls::new(2, 100);
        calls.add(piece(9, Some("a"), "")).unwrap();
        calls.add(piece(u32::MAX, Some("b"), "")).unwrap();
        // More pieces of the calls already open are fine.
        calls.add(piece(9, None, "{}")).unwrap();
        assert_eq!(
            calls.add(piece(0, Some("c"), "")),
            Err(Overflow::TooManyCalls)
        );
    }

    #[test]
    fn arguments_count_in_characters_across_calls() {
        let mut calls = ToolCalls::new(4, 6);
        calls.add(piece(0, Some("a"), "ééé")).unwrap();
        calls.add(piece(1, Some("b"), "xyz")).unwrap();
        assert_eq!(
            calls.add(piece(0, None, "!")),
            Err(Overflow::ArgumentsTooLong)
        );
        // A new round counts from nothing.
        calls.take();
        calls.add(piece(0, Some("a"), "abcdef")).unwrap();
    }
}
