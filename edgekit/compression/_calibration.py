"""Calibration data: load it from .npy/.npz/.pt and check it against the model's inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgekit.errors import CalibrationError
from edgekit.models import Inputs, TrainSet, as_inputs


def load_calibration_file(path: Path | str, example: Inputs) -> list[Inputs]:
    """Samples from a file: ``.npy`` (one input), ``.npz`` (``arr_0``, ``arr_1``... one per input) or
    ``.pt`` (a tensor, or a tuple of tensors; always loaded with ``weights_only=True``).

    Arrays are stacked samples: shape ``(N, *example.shape[1:])`` with batch-1 examples, or
    ``(N, *example.shape)``.
    """
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: calibration file not found")
    try:
        if path.suffix == ".npy":
            arrays = [torch.from_numpy(np.load(path, allow_pickle=False))]
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = [torch.from_numpy(z[k]) for k in sorted(z.files, key=_npz_order)]
        elif path.suffix in (".pt", ".pth"):
            obj = torch.load(path, weights_only=True, map_location="cpu")
            arrays = list(as_inputs(obj)) if isinstance(obj, (torch.Tensor, tuple, list)) else []
            if not arrays or not all(isinstance(a, torch.Tensor) for a in arrays):
                raise CalibrationError(f"{path}: expected a tensor or a tuple of tensors, got {type(obj).__name__}")
        else:
            raise CalibrationError(f"{path}: unsupported calibration format {path.suffix!r}; use .npy, .npz or .pt")
    except CalibrationError:
        raise
    except Exception as exc:
        raise CalibrationError(f"{path}: cannot read calibration data ({type(exc).__name__}: {exc})") from exc
    samples = split_samples(arrays, example, source=str(path))
    for i, (arr, ex) in enumerate(zip(arrays, example)):
        if arr.dtype != ex.dtype:
            raise CalibrationError(f"{path}: input {i} has dtype {arr.dtype}; the model takes {ex.dtype}. Convert "
                                   f"the data (numpy: .astype({str(ex.dtype).replace('torch.', 'np.')})) and save "
                                   "it again")
    return samples


def _npz_order(key: str) -> tuple[int, str]:
    digits = "".join(ch for ch in key if ch.isdigit())
    return (int(digits) if digits else 0, key)


def split_samples(arrays: Sequence[torch.Tensor], example: Inputs, source: str) -> list[Inputs]:
    if len(arrays) != len(example):
        raise CalibrationError(f"{source}: holds {len(arrays)} input array(s), the model takes {len(example)}")
    per_input: list[list[torch.Tensor]] = []
    for i, (arr, ex) in enumerate(zip(arrays, example)):
        if arr.dim() == ex.dim() + 1 and arr.shape[1:] == ex.shape:
            samples = [a for a in arr]
        elif arr.dim() == ex.dim() and ex.shape[0] == 1 and arr.shape[1:] == ex.shape[1:]:
            samples = [a.unsqueeze(0) for a in arr]
        else:
            raise CalibrationError(
                f"{source}: input {i} has shape {tuple(arr.shape)}; expected (N, {', '.join(map(str, ex.shape[1:]))}) "
                f"for a model input of shape {tuple(ex.shape)}"
            )
        per_input.append(samples)
    counts = {len(s) for s in per_input}
    if len(counts) != 1:
        raise CalibrationError(f"{source}: inputs hold different sample counts {sorted(counts)}")
    return [tuple(s[j] for s in per_input) for j in range(counts.pop())]


def check_calibration(samples: Sequence[Inputs], example: Inputs, *, min_samples: int, max_samples: int) -> list[Inputs]:
    """Validate shapes/dtypes against ``example``; too few samples is an error, extra ones are dropped."""
    if len(samples) < min_samples:
        raise CalibrationError(
            f"{len(samples)} calibration sample(s); the profile asks for at least {min_samples} "
            "(quantization ranges from fewer are unreliable). Pass more with --calibration"
        )
    out = []
    for j, sample in enumerate(samples):
        sample = as_inputs(sample)
        if len(sample) != len(example):
            raise CalibrationError(f"calibration sample {j} has {len(sample)} input(s), the model takes {len(example)}")
        for i, (t, ex) in enumerate(zip(sample, example)):
            if t.shape != ex.shape or t.dtype != ex.dtype:
                raise CalibrationError(
                    f"calibration sample {j}, input {i}: shape {tuple(t.shape)} dtype {t.dtype}; the model's example "
                    f"input is shape {tuple(ex.shape)} dtype {ex.dtype}. Convert the data to match"
                )
        out.append(sample)
    return out[:max_samples]


def load_train_file(path: Path | str, example: Inputs) -> TrainSet:
    """Labelled training data from ``.npz``: ``y`` (N,) integer labels and ``x`` (one input) or ``x_0``,
    ``x_1``... (one per input), each (N, *example.shape[1:])."""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        raise CalibrationError(f"{path}: training data must be an existing .npz file with arrays x (or x_0, x_1, ...) "
                               "and y")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            keys = ["x"] if "x" in files else sorted((k for k in files if k.startswith("x_")), key=_npz_order)
            if "y" not in files or not keys:
                raise CalibrationError(f"{path}: holds arrays {sorted(files)}; expected x (or x_0, x_1, ...) and y")
            arrays = [torch.from_numpy(z[k]) for k in keys]
            labels = torch.from_numpy(z["y"]).long()
    except CalibrationError:
        raise
    except Exception as exc:
        raise CalibrationError(f"{path}: cannot read training data ({type(exc).__name__}: {exc})") from exc
    samples = split_samples(arrays, example, source=str(path))  # checks count and per-sample shapes
    if len(labels) != len(samples):
        raise CalibrationError(f"{path}: {len(samples)} samples but {len(labels)} labels in y")
    stacked = tuple(torch.stack([s[i].reshape(example[i].shape[1:]) for s in samples]).to(example[i].dtype)
                    for i in range(len(example)))
    return TrainSet(inputs=stacked, labels=labels)
