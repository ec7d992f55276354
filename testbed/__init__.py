"""The testbed: procedural math and code-trace tasks, their tokenizers, and the training, evaluation and model
cards of the embedded SLM/LLM pair."""
