mod fake_llm;
mod llm;
