"""Small real models for the integration tests (importable as ``package.module:function`` too)."""

from __future__ import annotations

import torch
from torch import nn


class TinyEncoder(nn.Module):
    """A 2-layer transformer encoder classifier: int64 token ids and an int64 attention mask."""

    def __init__(self, vocab: int = 100, dim: int = 32, heads: int = 4, layers: int = 2, seq: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, seq, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(layers)])
        self.head = nn.Linear(dim, 4)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * -1e4
        for block in self.blocks:
            x = block(x, bias)
        m = mask.to(x.dtype).unsqueeze(-1)
        return self.head((x * m).sum(1) / m.sum(1).clamp(min=1.0))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5 + bias, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, s, d))
        return x + self.mlp(self.ln2(x))


def encoder_inputs(n: int, seq: int = 16, vocab: int = 100, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (1, seq), generator=gen)
        length = int(torch.randint(4, seq + 1, (1,), generator=gen))
        mask = (torch.arange(seq) < length).to(torch.int64).unsqueeze(0)
        out.append((ids, mask))
    return out


def tiny_encoder() -> nn.Module:
    torch.manual_seed(0)
    return TinyEncoder().eval()


class Bucketizer(nn.Module):
    """Uses aten.bucketize, which ExecuTorch and litert-torch cannot lower but ONNX can."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.register_buffer("edges", torch.tensor([-0.5, 0.0, 0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return y + torch.bucketize(y, self.edges).to(y.dtype)


def bucketizer() -> nn.Module:
    torch.manual_seed(0)
    return Bucketizer().eval()


def small_cnn() -> nn.Module:
    """A factory for ``package.module:function`` loading."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).eval()
