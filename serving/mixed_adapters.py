"""One backbone pass for a batch whose rows need different LoRA adapters.

peft's LoRA layers take `adapter_names=[one name per row]` and add each row's own adapter to
the shared frozen projection (its "mixed adapter batches"). peft injects that argument only
through `PeftModel.forward`; the service runs the blocks one by one (serving.dynamic_depth), so
this module injects it itself, and shrinks the list when early exit drops rows from the batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class MixedAdapters:
    def __init__(self, model: torch.nn.Module):
        from peft.tuners.lora import LoraLayer

        self.layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        self.names: list[str] = []

    @contextlib.contextmanager
    def rows(self, names: list[str]) -> Iterator[MixedAdapters]:
        """Within the block, row i of every batch through the model uses adapter names[i]."""
        self.names = list(names)
        hooks = [layer.register_forward_pre_hook(self._inject, with_kwargs=True) for layer in self.layers]
        try:
            yield self
        finally:
            for hook in hooks:
                hook.remove()
            self.names = []

    def keep(self, mask: torch.Tensor) -> None:
        """Rows left the batch (early exit): keep the names of the rows that stay."""
        self.names = [name for name, kept in zip(self.names, mask.tolist()) if kept]

    def _inject(self, module, args, kwargs):
        kwargs["adapter_names"] = self.names
        return args, kwargs
