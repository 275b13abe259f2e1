mod chat_support;
mod fake_llm;
mod llm;
mod rest_chat;
mod store;
mod ws;
