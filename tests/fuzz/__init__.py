"""ferrolm's fuzz harness: hypothesis-generated hostile inputs for every surface that reads
files or arguments (model configs, safetensors, GGUF, LoRA and prompt-tuning adapters,
tokenizer.json, chat templates, generation options), run in crash-isolated worker processes.

Entry point: tests/fuzz/run.py (see docs/fuzzing.md); CI slice: tests/test_fuzz.py.
"""
