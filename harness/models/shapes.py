"""Model shapes known offline: the ``config.json`` hyperparameters of the reference models (no weights, no text).

``harness synth-checkpoint --like Qwen/Qwen2.5-72B-Instruct`` uses these when the hub cannot be reached; a local
``config.json`` (or a model dir holding one) or any hub id works too (then only ``config.json`` is downloaded).
"""
from __future__ import annotations

_QWEN2 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "rms_norm_eps": 1e-6,
          "rope_theta": 1000000.0, "max_position_embeddings": 32768, "attention_dropout": 0.0,
          "use_sliding_window": False, "sliding_window": None, "bos_token_id": 151643, "eos_token_id": 151645,
          "initializer_range": 0.02, "dtype": "bfloat16"}


def _qwen2(hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int, tied: bool) -> dict:
    return {**_QWEN2, "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab,
            "tie_word_embeddings": tied, "max_window_layers": layers}


KNOWN_SHAPES: dict[str, dict] = {
    "Qwen/Qwen2.5-0.5B-Instruct": _qwen2(896, 4864, 24, 14, 2, 151936, True),
    "Qwen/Qwen2.5-1.5B-Instruct": _qwen2(1536, 8960, 28, 12, 2, 151936, True),
    "Qwen/Qwen2.5-7B-Instruct": _qwen2(3584, 18944, 28, 28, 4, 152064, False),
    "Qwen/Qwen2.5-72B-Instruct": _qwen2(8192, 29568, 80, 64, 8, 152064, False),
}
