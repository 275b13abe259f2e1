mod fake_llm;
