"""Muon for the transformer blocks' weight matrices, AdamW for everything else, as the one optimizer the Trainer drives.

`train.py --muon_lr 0.02` uses it. Muon (torch.optim.Muon) orthogonalises each 2-D update with a few
Newton-Schulz iterations; it is meant for hidden weight matrices only, so embeddings (and the head tied to
them), LayerNorms and biases stay with AdamW at `--learning_rate`. On Tiny Shakespeare it reaches a given
validation loss in fewer steps than AdamW and a lower minimum (the README has the figures), but its step runs
eagerly (slower than AdamW's fused kernel), and its bf16 Newton-Schulz matmuls crawl on CPUs without bf16
units: a GPU option.

Why a class of our own: the Trainer, its LR schedulers and checkpoints expect a single torch Optimizer, and
torch has no optimizer that splits parameters between two rules. This one only wires the two together: its
param_groups are the two optimizers' own group dicts (so a scheduler's LR changes reach them) and its state
dict holds both state dicts.
"""

import torch
from torch import nn


class MuonWithAdamW(torch.optim.Optimizer):
    def __init__(self, model: nn.Module, muon_lr: float, lr: float, weight_decay: float, betas, eps: float):
        blocks = model.base_model.h
        matrices = [module.weight for module in blocks.modules() if isinstance(module, nn.Linear)]
        chosen = {id(p) for p in matrices}
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
        self.muon = torch.optim.Muon(matrices, lr=muon_lr, weight_decay=weight_decay)
        self.adamw = torch.optim.AdamW(
            others, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=others[0].is_cuda
        )
        # defaults["lr"] is what schedulers such as cosine_with_min_lr read the base rate from: AdamW's.
        super().__init__([*others, *matrices], {"lr": lr})
        self.param_groups = [*self.adamw.param_groups, *self.muon.param_groups]  # the logged LR is AdamW's

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self):
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict):
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        # Loading replaces each optimizer's group dicts (accelerate does it once to move state to the device):
        # point at the new ones, or the LR schedule would be writing into dicts nobody reads.
        self.param_groups = [*self.adamw.param_groups, *self.muon.param_groups]


__all__ = ["MuonWithAdamW"]
