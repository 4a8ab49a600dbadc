"""Write a tiny random-weight llama-architecture GGUF model (about 0.5 MB) that a real llama.cpp server loads on a
CPU in milliseconds, with no download. Its output is gibberish; the point is a real server with real endpoints,
loading state, auth and streaming.

    python tests/tools/tiny_gguf.py OUT.gguf
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np

N_VOCAB, N_EMBD, N_LAYER, N_HEAD, N_FF, N_CTX_TRAIN = 320, 64, 2, 4, 128, 512
_WORDS = [f"▁{w}" for w in ("the", "a", "is", "of", "and", "to", "in", "it", "you", "that", "he", "was", "for",
                             "on", "are", "with", "as", "I", "his", "they")]
_LETTERS = [f"▁{c}" for c in "bcdefghjklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz")


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    """SentencePiece-style tokens: unk/bos/eos, 256 byte tokens, some words, then filler up to N_VOCAB."""
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>")
        scores.append(0.0)
        types.append(6)  # byte token
    for rank, word in enumerate((_WORDS + _LETTERS)[: N_VOCAB - len(tokens)]):
        tokens.append(word)
        scores.append(-float(rank))
        types.append(1)
    while len(tokens) < N_VOCAB:
        tokens.append(f"▁w{len(tokens)}")
        scores.append(-1000.0)
        types.append(1)
    return tokens, scores, types


def write_tiny_gguf(path: Path, *, name: str = "tiny-llama-test", embd: int = N_EMBD, layers: int = N_LAYER,
                    ff: int = N_FF) -> Path:
    """Write the model to `path` (deterministic: the same bytes every time) and return the path.

    `embd`, `layers` and `ff` make a bigger model whose tokens take measurable time on one thread (the selection
    benchmark); the defaults are the 0.5 MB one the tests load in milliseconds.
    """
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(N_CTX_TRAIN)
    writer.add_embedding_length(embd)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(embd // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0)  # all F32
    tokens, scores, types = _vocabulary()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:")

    def random(tensor: str, *shape: int) -> None:
        writer.add_tensor(tensor, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    def ones(tensor: str) -> None:
        writer.add_tensor(tensor, np.ones(embd, dtype=np.float32))

    random("token_embd.weight", N_VOCAB, embd)
    ones("output_norm.weight")
    random("output.weight", N_VOCAB, embd)
    for layer in range(layers):
        ones(f"blk.{layer}.attn_norm.weight")
        ones(f"blk.{layer}.ffn_norm.weight")
        for projection in ("attn_q", "attn_k", "attn_v", "attn_output"):
            random(f"blk.{layer}.{projection}.weight", embd, embd)
        random(f"blk.{layer}.ffn_gate.weight", ff, embd)
        random(f"blk.{layer}.ffn_up.weight", ff, embd)
        random(f"blk.{layer}.ffn_down.weight", embd, ff)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


if __name__ == "__main__":
    print(write_tiny_gguf(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny.gguf")))
