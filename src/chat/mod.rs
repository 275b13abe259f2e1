//! Chat: the LLM providers that write replies and the history trimming that feeds them.

pub mod context;
pub mod llm;
