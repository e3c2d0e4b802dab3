"""A small PyTorch model with one layer of each kind, its batches and its rows, shared by the PyTorch tests."""

from __future__ import annotations

import torch
from torch import nn

BATCH = 4
TOKENS = 6
VOCAB = 20
CLASSES = 3
# The rows of `Zoo`, input -> output, with their kinds.
ZOO_ROWS = {
    "embed": "embedding",
    "conv": "conv",
    "norm": "normalization",
    "lstm": "recurrent",
    "attn": "attention",
    "attn.out_proj": "dense",  # its forward is never called: MultiheadAttention uses its weights
    "mix": "dense",
    "head": "dense",
}


class Zoo(nn.Module):
    """One layer of each kind; `head` is created first and used last, so attribute order is not forward order."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, CLASSES)
        self.mix = nn.Linear(16, 16)
        self.embed = nn.Embedding(VOCAB, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.norm = nn.BatchNorm1d(8)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, tokens):
        x = self.embed(tokens)
        x = self.norm(self.conv(x.transpose(1, 2))).transpose(1, 2)
        h, _ = self.lstm(x)
        a, _ = self.attn(h, h, h)
        return self.head(torch.relu(self.mix(torch.cat([h, a], -1)))).mean(1)


def zoo_batches(count: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randint(0, VOCAB, (BATCH, TOKENS), generator=generator),
            torch.randint(0, CLASSES, (BATCH,), generator=generator),
        )
        for _ in range(count)
    ]


def rows_of(model: nn.Module, names) -> dict[str, list[str]]:
    """{row: the parameter names it owns directly}, the reference's grouping."""
    modules = dict(model.named_modules())
    return {name: ["%s.%s" % (name, p) for p, _ in modules[name].named_parameters(recurse=False)] for name in names}


def make_zoo(seed: int = 0):
    torch.manual_seed(seed)
    model = Zoo()
    return model, torch.optim.Adam(model.parameters(), lr=0.01)
