"""Helpers that build real artefacts for integration tests (a tiny GGUF model, a real llama.cpp server)."""
