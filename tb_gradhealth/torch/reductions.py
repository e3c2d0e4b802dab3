"""Per-layer reductions of one optimizer step on the device: multi-tensor ops in, float32 `[n_layers]` vectors out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tb_gradhealth.torch.layers import LayerParams

_INF = float("inf")


def _dense(gradient: torch.Tensor) -> torch.Tensor:
    # A sparse gradient (nn.Embedding(sparse=True)) may repeat rows; the
    # update the optimizer applies is their sum per row.
    return gradient.coalesce().values() if gradient.is_sparse else gradient


class LayerReducer:
    """Reduces the gradients and weights of a fixed list of layers to per-layer statistics, on their device.

    Sums of squares are `torch._foreach_*` ops over all tensors at once (one
    fused kernel per device on accelerators, one call into C++ on the CPU)
    followed by one `index_add_` into the `[n_layers]` output; nothing is
    read back to the host. Norms stay squared until the host takes the
    square roots of a whole buffer at once.

    Args:
      layers: the rows, each with the parameters it owns.
      device: where the per-layer vectors live (the device of the first
        parameter); per-parameter results from other devices are moved there.
    """

    def __init__(self, layers: Sequence[LayerParams], device: torch.device):
        self.layers = tuple(layers)
        self.device = device
        self.n_layers = len(self.layers)
        self.params = [p for layer in self.layers for p in layer.params]
        layer_of_param = [row for row, layer in enumerate(self.layers) for _ in layer.params]
        self._layer_of_param = self._index(layer_of_param)
        # Gradients and weights reduced together into two adjacent rows.
        self._layer_of_param_pair = self._index(layer_of_param + [row + self.n_layers for row in layer_of_param])
        self._one_device = all(p.device == device for p in self.params)
        # On the CPU the infinity norm kernel is far slower than one min/max
        # pass per tensor (benchmarks/README.md); on accelerators the fused
        # multi-tensor norm is one kernel.
        self._max_by_min_max = device.type == "cpu"
        self._layer_of_param_list = layer_of_param
        self._sized = [i for i, p in enumerate(self.params) if p.numel() > 0]
        self._full_max_index = self._max_index(self._sized)
        self._before: list[torch.Tensor] | None = None

    def _index(self, rows: Sequence[int]) -> torch.Tensor:
        return torch.tensor(list(rows), dtype=torch.int64, device=self.device)

    def zeros(self) -> torch.Tensor:
        return torch.zeros(self.n_layers, dtype=torch.float32, device=self.device)

    def _square_norms(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Each tensor's sum of squares, as one float32 vector on `device`."""
        return self._stacked(torch._foreach_norm(list(tensors), 2)).square_()

    def _stacked(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        if not self._one_device:
            values = [value.to(self.device, non_blocking=True) for value in values]
        return torch.stack(list(values)).float()

    def gradients(self) -> tuple[list[torch.Tensor], list[int] | None]:
        """The step's gradients (dense), and the parameters they belong to unless every parameter has one.

        A parameter without a gradient (unused in this step's forward pass) is
        left out, which counts as a zero gradient.
        """
        grads = [p.grad for p in self.params]
        if all(g is not None for g in grads):
            return [_dense(g) for g in grads], None
        present = [i for i, g in enumerate(grads) if g is not None]
        return [_dense(grads[i]) for i in present], present

    def _rows_of(self, present: list[int] | None) -> torch.Tensor:
        if present is None:
            return self._layer_of_param
        return self._layer_of_param[self._index(present)]

    def square_sums(self, grads: Sequence[torch.Tensor], present: list[int] | None = None) -> torch.Tensor:
        """Per-layer sums of squares of `grads` (as from `gradients()`), a new `[n_layers]` tensor."""
        out = self.zeros()
        if grads:
            out.index_add_(0, self._rows_of(present), self._square_norms(grads))
        return out

    def grad_and_weight_square_sums(
        self, out: torch.Tensor, grads: Sequence[torch.Tensor], present: list[int] | None = None
    ) -> None:
        """Adds the per-layer sums of squares of `grads` to `out[0]` and of the weights to `out[1]` (`out`: `[2, n_layers]`)."""
        weights = [p.detach() for p in self.params]
        sums = self._square_norms(list(grads) + weights)
        index = self._layer_of_param_pair
        if present is not None:
            index = torch.cat([self._rows_of(present), self._layer_of_param + self.n_layers])
        out.view(-1).index_add_(0, index, sums)

    def nonfinite_counts(self, grads: Sequence[torch.Tensor], present: list[int] | None = None) -> torch.Tensor:
        """Per-layer number of NaN and Inf elements: x * 0 is 0 for a finite x and NaN otherwise, counted as non-zero."""
        out = self.zeros()
        if grads:
            counts = torch._foreach_norm(torch._foreach_mul(list(grads), 0.0), 0)
            out.index_add_(0, self._rows_of(present), self._stacked(counts))
        return out

    def _max_index(self, params: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = [self._layer_of_param_list[i] for i in params]
        if not self._max_by_min_max:
            return self._index(rows), None
        signs = torch.tensor([-1.0, 1.0] * len(rows), device=self.device)
        return self._index([row for row in rows for _ in range(2)]), signs

    def max_abs(self, out: torch.Tensor, grads: Sequence[torch.Tensor], present: list[int] | None = None) -> None:
        """Sets `out` (zeros, `[n_layers]`) to each layer's largest |g|, NaN if any element is NaN."""
        if present is None:
            tensors = [grads[i] for i in self._sized]
            index, signs = self._full_max_index
        else:
            # The infinity norm of an empty tensor is undefined; an empty
            # tensor adds nothing to its layer's largest magnitude.
            chosen = [(g, i) for g, i in zip(grads, present) if g.numel() > 0]
            tensors = [g for g, _ in chosen]
            index, signs = self._max_index([i for _, i in chosen])
        if not tensors:
            return
        if self._max_by_min_max:
            # max |g| = max(-min g, max g): both from one pass per tensor.
            values = self._stacked([value for g in tensors for value in torch.aminmax(g)]).mul_(signs)
        else:
            values = self._stacked(torch._foreach_norm(tensors, _INF))
        out.scatter_reduce_(0, index, values, "amax")

    def keep_weights(self) -> None:
        """Copies the weights before the update into buffers kept for later steps (created on first use)."""
        params = [p.detach() for p in self.params]
        if self._before is None:
            self._before = [torch.empty_like(p) for p in params]
        torch._foreach_copy_(self._before, params)

    def update_square_sums(self, out: torch.Tensor) -> None:
        """After the update: adds the per-layer ||after - before||^2 of the weights `keep_weights` copied to `out`."""
        torch._foreach_sub_(self._before, [p.detach() for p in self.params])
        out.index_add_(0, self._layer_of_param, self._square_norms(self._before))


def norms_and_ratio(
    grad_sq: np.ndarray, weight_sq: np.ndarray, update_sq: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Host side: (grad_norm, weight_norm, update_ratio) from the squared sums, any leading shape.

    update_ratio is ||after - before|| / ||before||: 0 for a layer that did not
    move, +inf for an all-zero one that did, NaN for a NaN update.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        weight_norm = np.sqrt(weight_sq)
        update_norm = np.sqrt(update_sq)
        ratio = np.where(update_norm == 0, np.float32(0), update_norm / weight_norm)
    return np.sqrt(grad_sq), weight_norm, ratio.astype(np.float32)
