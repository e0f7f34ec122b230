"""Benchmark: how much of the Hugging Face model zoo exports and passes parity, per target and precision.

    .venv/bin/python scripts/bench/zoo.py [--models resnet,vit,...] [--targets executorch,tflite,onnx] [--int4]
        [--out DIR] [--keep] [--json FILE]

Builds small `transformers` models from configs with random weights (seeded, no download): convolutional
vision (ResNet, ConvNeXt, MobileViT), vision transformers (ViT, Swin), text encoders (BERT, DistilBERT,
ALBERT), decoders (GPT-2, Llama with grouped-query attention) and speech (Wav2Vec2, the Whisper encoder),
each wrapped to positional tensors in, one tensor out, with 32 calibration and 8 held-out samples. Each is
compressed for the `x86` profile and exported to ExecuTorch, LiteRT and ONNX at fp32 and int8 (and int4 with
--int4), every artifact checked for parity in its own runtime against the PyTorch fp32 model on the held-out
inputs (outputs judged as features: cosine and max abs error, since random-weight class scores tie). Prints a
row per model x target x precision (PASS/FAIL, worst cosine, size vs that target's fp32, export seconds, why it
failed) and checks the coverage goals: >= 95% of fp32 and >= 90% of int8 artifacts export and pass parity.
Any int8 artifact with cosine < 0.5 is printed as `BUG?`: that is a broken quantization, not a limit. One
thread, one export at a time; each model's artifacts are deleted once its rows are recorded (unless --keep).
Exit code 0 whatever the coverage (it is a report), 2 when the script itself crashes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

N_CALIBRATION = 32
N_PARITY = 8
SEQ = 16
IMAGE = 32
AUDIO = 4000
VOCAB = 1000
GOALS = {"fp32": 0.95, "int8": 0.90}
BUG_COSINE = 0.5


# --------------------------------------------------------------------------------------------- wrappers


class FirstOutput(nn.Module):
    """``model(*inputs)`` -> its first output (logits, last_hidden_state) as one tensor."""

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__()
        self.model = model
        self.kwargs = kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, return_dict=False, **self.kwargs)[0]


class TextEncoder(nn.Module):
    """``(input_ids, attention_mask)`` -> last_hidden_state, or the pooled output with ``pooled=True``."""

    def __init__(self, model: nn.Module, pooled: bool = False) -> None:
        super().__init__()
        self.model = model
        self.index = 1 if pooled else 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[self.index]


# --------------------------------------------------------------------------------------------- inputs

Sample = tuple[torch.Tensor, ...]


def images(n: int, size: int = IMAGE, channels: int = 3) -> list[Sample]:
    return [(torch.randn(1, channels, size, size),) for _ in range(n)]


def texts(n: int, vocab: int = VOCAB, seq: int = SEQ, pad_id: int = 0) -> list[Sample]:
    """Random ids with a real length between seq/2 and seq: the rest is padding, masked out."""
    out: list[Sample] = []
    for _ in range(n):
        length = int(torch.randint(seq // 2, seq + 1, ()).item())
        ids = torch.randint(3, vocab, (1, seq), dtype=torch.int64)
        mask = torch.zeros(1, seq, dtype=torch.int64)
        mask[:, :length] = 1
        ids[:, length:] = pad_id
        out.append((ids, mask))
    return out


def token_ids(n: int, vocab: int = VOCAB, seq: int = SEQ * 2) -> list[Sample]:
    return [(torch.randint(0, vocab, (1, seq), dtype=torch.int64),) for _ in range(n)]


def waves(n: int, length: int = AUDIO) -> list[Sample]:
    return [(0.1 * torch.randn(1, length),) for _ in range(n)]


def mels(n: int, bins: int, frames: int) -> list[Sample]:
    return [(torch.randn(1, bins, frames),) for _ in range(n)]


# --------------------------------------------------------------------------------------------- the zoo


@dataclass
class Entry:
    family: str
    arch: str
    build: Callable[[Any], tuple[nn.Module, Callable[[int], list[Sample]]]]


def _resnet(tf: Any) -> tuple[nn.Module, Callable[[int], list[Sample]]]:
    cfg = tf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1], layer_type="basic",
                          num_labels=10)
    return FirstOutput(tf.ResNetForImageClassification(cfg)), images


def _convnext(tf: Any) -> tuple[nn.Module, Callable[[int], list[Sample]]]:
    cfg = tf.ConvNextConfig(num_stages=3, hidden_sizes=[16, 32, 64], depths=[1, 1, 1], num_labels=10)
    return FirstOutput(tf.ConvNextForImageClassification(cfg)), images


def _mobilevit(tf: Any) -> tuple[nn.Module, Callable[[int], list[Sample]]]:
    cfg = tf.MobileViTConfig(image_size=64, patch_size=2, hidden_sizes=[32, 48, 64],
                             neck_hidden_sizes=[8, 16, 24, 32, 48, 64, 128], num_attention_heads=2,
                             expand_ratio=2.0, num_labels=10)
    return FirstOutput(tf.MobileViTForImageClassification(cfg)), lambda n: images(n, 64)


def _vit(tf: Any) -> tuple[nn.Module, Callable[[int], list[Sample]]]:
    cfg = tf.ViTConfig(image_size=IMAGE, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128, num_labels=10)
    return FirstOutput(tf.ViTForImageClassification(cfg)), images


def _swin(tf: Any) -> tuple[nn.Module, Callable[[int], list[Sample]]]:
    cfg = tf.SwinConfig(image_size=IMAGE, patch_size=2, embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=4,
                        mlp_ratio=2.0, num_labels=10)
    return FirstOutput(tf.SwinForImageClassification(cfg)), images


def _bert(tf: Any) -> tuple[nn.Module, Callable[[int], list[Sample]]]:
    from edgekit.models.hf import SentenceEncoder  # edgekit's own wrapper: mean-pooled, normalized

    cfg = tf.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64)
    return SentenceEncoder(tf.BertModel(cfg)), texts


def _distilbert(tf: Any) -> tuple[nn.Module, Callable[[int], list[Sample]]]:
    cfg = tf.DistilBertConfig(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                              max_position_embeddings=64)
    return TextEncoder(tf.DistilBertModel(cfg)), texts


def _albert(tf: Any) -> tuple[nn.Module, Callable[[int], list[Sample]]]:
    cfg = tf.AlbertConfig(vocab_size=VOCAB, embedding_size=32, hidden_size=64, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=128, max_position_embeddings=64, pad_token_id=0)
    return TextEncoder(tf.AlbertModel(cfg), pooled=True), texts


def _gpt2(tf: Any) -> tuple[nn.Module, Callable[[int], list[Sample]]]:
    from edgekit.models.hf import CausalLM

    cfg = tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=VOCAB,
                        bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    return CausalLM(tf.GPT2LMHeadModel(cfg)), token_ids


def _llama(tf: Any) -> tuple[nn.Module, Callable[[int], list[Sample]]]:
    from edgekit.models.hf import CausalLM

    cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return CausalLM(tf.LlamaForCausalLM(cfg)), token_ids


def _wav2vec2(tf: Any) -> tuple[nn.Module, Callable[[int], list[Sample]]]:
    cfg = tf.Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                            conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                            vocab_size=32)
    return FirstOutput(tf.Wav2Vec2Model(cfg)), waves


def _whisper(tf: Any) -> tuple[nn.Module, Callable[[int], list[Sample]]]:
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    cfg = tf.WhisperConfig(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                           num_mel_bins=40, max_source_positions=50, decoder_layers=1, vocab_size=VOCAB,
                           pad_token_id=VOCAB - 1, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
                           decoder_start_token_id=VOCAB - 2)
    return FirstOutput(WhisperEncoder(cfg)), lambda n: mels(n, 40, 100)


ZOO: dict[str, Entry] = {
    "resnet": Entry("vision-cnn", "ResNetForImageClassification", _resnet),
    "convnext": Entry("vision-cnn", "ConvNextForImageClassification", _convnext),
    "mobilevit": Entry("vision-hybrid", "MobileViTForImageClassification", _mobilevit),
    "vit": Entry("vision-transformer", "ViTForImageClassification", _vit),
    "swin": Entry("vision-transformer", "SwinForImageClassification", _swin),
    "bert": Entry("text-encoder", "BertModel (edgekit SentenceEncoder)", _bert),
    "distilbert": Entry("text-encoder", "DistilBertModel", _distilbert),
    "albert": Entry("text-encoder", "AlbertModel (pooled)", _albert),
    "gpt2": Entry("decoder", "GPT2LMHeadModel", _gpt2),
    "llama": Entry("decoder", "LlamaForCausalLM (GQA)", _llama),
    "wav2vec2": Entry("speech", "Wav2Vec2Model", _wav2vec2),
    "whisper": Entry("speech", "WhisperEncoder", _whisper),
}


def settle_batchnorm(module: nn.Module, samples: list[Sample]) -> None:
    """Give BatchNorm layers the statistics of the data, as training would (affine reset to 1, 0).

    Random HF inits (normal, std 0.02, BatchNorm scales included) shrink a deep CNN's activations by ~50x a
    layer until they underflow to 0 (MobileViT's logits come out exactly constant); a trained network's
    BatchNorm keeps each channel near unit variance. Running the calibration inputs in train mode with a
    cumulative average sets the running statistics so; the weights stay random.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    with torch.no_grad():
        for bn in norms:
            bn.reset_parameters()  # weight 1, bias 0, running mean 0, var 1
            bn.momentum = None  # cumulative average over the passes below
        module.train()
        for sample in samples:
            module(*sample)
    module.eval()


def build_spec(name: str) -> Any:
    """The ModelSpec for zoo entry ``name``: built seeded, fp32, eval mode, with calibration + held-out inputs."""
    import transformers

    from edgekit.models import ModelSpec

    torch.manual_seed(0)
    module, make_inputs = ZOO[name].build(transformers)
    samples = make_inputs(N_CALIBRATION + N_PARITY)
    settle_batchnorm(module, samples[:N_CALIBRATION])
    module = module.eval()
    return ModelSpec(name=f"zoo-{name}", module=module, example_inputs=samples[0], calibration=samples[:N_CALIBRATION],
                     parity_inputs=samples[N_CALIBRATION:], outputs="features", origin=f"transformers {ZOO[name].arch}")


# --------------------------------------------------------------------------------------------- one model


def _short(text: str, limit: int = 120) -> str:
    text = text.split(" (toolchain log: ")[0]
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _log_tail(error: str | None, lines: int = 15) -> str | None:
    if not error or "(toolchain log: " not in error:
        return None
    path = Path(error.rsplit("(toolchain log: ", 1)[1].rstrip(")"))
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return None


def _tb_summary(exc: BaseException, frames: int = 4) -> str:
    tb = traceback.extract_tb(exc.__traceback__)[-frames:]
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(tb))
    return f"{type(exc).__name__}: {_short(str(exc), 300)} at {where}"


def run_model(name: str, targets: list[str], precisions: list[str], out: Path, keep: bool,
              profile: str) -> list[dict[str, Any]]:
    from edgekit.compression import compress
    from edgekit.exporters import export

    entry = ZOO[name]
    base = {"model": name, "arch": entry.arch, "family": entry.family}
    stage = "build"
    start = time.perf_counter()
    try:
        spec = build_spec(name)
        params = sum(p.numel() for p in spec.module.parameters())
        base["params"] = params
        stage = "compress"
        cm = compress(spec, profile)
        stage = "export"
        arts = export(cm, targets, out / name, precisions=precisions, jobs=1)
    except Exception as exc:
        summary = _tb_summary(exc)
        print(f"  {name}: {stage} raised {summary}", file=sys.stderr)
        return [{**base, "target": t, "precision": p, "status": "FAIL", "stage": stage, "cosine": None,
                 "max_abs_err": None, "bytes": None, "size_ratio": None, "export_seconds": None,
                 "check_seconds": None, "reason": _short(f"{stage}: {type(exc).__name__}: {exc}"),
                 "error": f"{stage}: {summary}", "traceback": traceback.format_exc(), "log_tail": None}
                for t in targets for p in precisions]
    fp32_bytes = {a.target: a.bytes for a in arts if a.precision == "fp32" and a.bytes}
    rows: list[dict[str, Any]] = []
    for a in arts:
        par = a.parity
        if a.error:
            reason = _short(a.error)
        elif par is None:
            reason = "not checked"
        elif not par.ok:
            reason = _short("; ".join(par.failures) or "parity not ok")
        else:
            reason = ""
        ref = fp32_bytes.get(a.target)
        rows.append({**base, "target": a.target, "precision": a.precision, "status": "PASS" if a.ok else "FAIL",
                     "stage": "ok" if a.ok else ("export" if a.error and a.bytes is None else "parity"),
                     "cosine": par.cosine if par else None, "max_abs_err": par.max_abs_err if par else None,
                     "bytes": a.bytes, "size_ratio": a.bytes / ref if a.bytes and ref else None,
                     "export_seconds": a.export_seconds, "check_seconds": a.check_seconds, "reason": reason,
                     "error": a.error, "failures": list(par.failures) if par else [],
                     "log_tail": _log_tail(a.error)})
    if not keep:
        shutil.rmtree(out / name, ignore_errors=True)
    ok = sum(r["status"] == "PASS" for r in rows)
    print(f"  {name}: {ok}/{len(rows)} pass, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return rows


# --------------------------------------------------------------------------------------------- report


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ["model", "family", "target", "prec", "status", "cosine", "max_abs", "size", "export s", "reason"]
    body = [[r["model"], r["family"], r["target"], r["precision"], r["status"], _fmt(r["cosine"], ".5f"),
             _fmt(r["max_abs_err"], ".2e"), _fmt(r["size_ratio"], ".2f") + ("x" if r["size_ratio"] else ""),
             _fmt(r["export_seconds"], ".1f"), r["reason"]] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    widths[-1] = len(head[-1])  # the reason is last: no padding
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    print(line)
    print("-" * (len(line) + 40))
    for row in body:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def summarize(rows: list[dict[str, Any]], precisions: list[str], targets: list[str]) -> None:
    print()
    for t in targets:
        parts = []
        for p in precisions:
            sel = [r for r in rows if r["target"] == t and r["precision"] == p]
            parts.append(f"{p} {sum(r['status'] == 'PASS' for r in sel)}/{len(sel)}")
        print(f"  {t:<11} " + ", ".join(parts))
    print()
    for p in precisions:
        sel = [r for r in rows if r["precision"] == p]
        n, m = sum(r["status"] == "PASS" for r in sel), len(sel)
        pct = 100 * n / m if m else 0.0
        goal = GOALS.get(p)
        if goal is None:
            print(f"zoo {p}: {n}/{m} artifacts export and pass parity = {pct:.1f}% (no goal)")
        else:
            verdict = "PASS" if m and n / m >= goal else "FAIL"
            print(f"GOAL zoo {p}: {n}/{m} artifacts export and pass parity = {pct:.1f}% "
                  f"(goal >= {100 * goal:.0f}%): {verdict}")
    bugs = [r for r in rows if r["precision"] == "int8" and r["cosine"] is not None and r["cosine"] < BUG_COSINE]
    for r in bugs:
        print(f"BUG? {r['model']} {r['target']} int8: cosine {r['cosine']:.4f} < {BUG_COSINE} "
              f"(max abs err {_fmt(r['max_abs_err'], '.3g')}): a broken quantization, not a limit")
    raised = [r for r in rows if r["stage"] in ("build", "compress", "export") and r.get("traceback")]
    seen: set[str] = set()
    for r in raised:
        if r["model"] not in seen:
            seen.add(r["model"])
            print(f"RAISED {r['model']}: {r['error']}")


def _unshadow() -> None:
    """Drop this script's folder from sys.path: a sibling ``transformers.py`` (scripts/bench has one) would
    otherwise be imported in place of the ``transformers`` package."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    cached = sys.modules.get("transformers")
    if cached is not None and Path(getattr(cached, "__file__", "") or "").resolve().parent == here:
        del sys.modules["transformers"]


def main() -> None:
    _unshadow()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(ZOO), help=f"comma-separated, of: {','.join(ZOO)}")
    ap.add_argument("--targets", default="executorch,tflite,onnx")
    ap.add_argument("--profile", default="x86")
    ap.add_argument("--int4", action="store_true", help="also export int4 (no goal: reported only)")
    ap.add_argument("--out", help="where artifacts are written (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep each model's artifacts (default: delete them)")
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in ZOO]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {', '.join(ZOO)}")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    precisions = ["fp32", "int8"] + (["int4"] if args.int4 else [])
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgekit-zoo-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(models, 1):
            print(f"[{i}/{len(models)}] {name} ({ZOO[name].arch})", file=sys.stderr)
            rows.extend(run_model(name, targets, precisions, out, args.keep, args.profile))
            sys.stderr.flush()
    print(f"\nzoo: {len(models)} models x {len(targets)} targets x {len(precisions)} precisions, profile "
          f"{args.profile}, one thread; size = artifact bytes / that target's fp32 artifact\n")
    print_table(rows)
    summarize(rows, precisions, targets)
    print(f"\nwall time {time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException:  # a crash of the benchmark itself, not of a model: exit 2
        traceback.print_exc()
        sys.exit(2)
