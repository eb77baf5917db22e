"""The synthetic lab (shared design: lab.md): a verifiable task with genuine choices, its answer
formats and privileged contexts, and the tokenizer the lab's models use, saved and loaded as a
Hugging Face tokenizer exactly as a real model's is."""
