"""The testbed: procedural math and code-trace tasks, their tokenizer and the SLM/LLM pair trained on them."""
