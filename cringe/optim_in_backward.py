"""The optimiser step inside the backward pass: each parameter is updated, and its gradient freed, as soon as
autograd has accumulated it, so the full set of gradients never exists at once (torchtune's `optimizer_in_bwd`).

For a full fine-tune with AdamW this can remove one parameter-sized buffer (the gradients) from the peak, where
the peak is the optimiser step. Measured so far it is not: with the fused head (cringe.chunked) the peak is in the
forward pass, before any gradient exists, and this saved 0-3% on an H200 and raised RSS on a CPU
(docs/performance.md, "Why `optimizer_in_backward` lowers no peak"). It costs three things, which `CringeConfig`
refuses rather than silently changes: no global gradient-norm clipping (a parameter is stepped before the others'
gradients exist), no gradient accumulation (every micro-batch would step), and no data parallelism (DDP all-reduces
gradients after they are accumulated, i.e. after this step has used them).

transformers has the same trick for GaLore's `*_layerwise` optimisers only, and its dummy optimiser saves no
optimiser state, so a resumed run restarts Adam's moments from zero. `OptimizerInBackward` keeps every
per-parameter state in `state_dict()`, and takes its learning rate from `param_groups`, which the ordinary
scheduler drives.
"""

from __future__ import annotations

import torch


class OptimizerInBackward(torch.optim.Optimizer):
    """Takes over an ordinary optimiser, built but never stepped: one optimiser of its class per trainable
    parameter, with that parameter's group settings, stepped by a post-accumulate-grad hook.

    To `Trainer`, accelerate and the LR scheduler it is an ordinary optimiser: `param_groups` are the original
    groups (weight decay per group, the `lr` the scheduler writes), `step()` and `zero_grad()` do nothing because the
    work is done in backward, and `state_dict()` / `load_state_dict()` carry every per-parameter state.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        super().__init__([dict(group) for group in optimizer.param_groups], optimizer.defaults)
        self._inner: dict[torch.Tensor, tuple[torch.optim.Optimizer, dict]] = {}
        self._handles = []
        for group in self.param_groups:
            settings = {key: value for key, value in group.items() if key != "params"}
            for param in group["params"]:
                inner = type(optimizer)([param])
                inner.param_groups[0].update(settings)  # the group's own keys, whatever the constructor calls them
                self._inner[param] = (inner, group)
                self._handles.append(param.register_post_accumulate_grad_hook(self._step_parameter))

    def _step_parameter(self, param: torch.Tensor) -> None:
        optimizer, group = self._inner[param]
        optimizer.param_groups[0]["lr"] = group["lr"]  # the scheduler writes the outer group
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # frees the gradient now, which is the point

    def step(self, closure=None):
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass  # every gradient was applied and freed during backward

    def state_dict(self) -> dict:
        return {
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups],
            "per_parameter": [optimizer.state_dict() for optimizer, _ in self._inner.values()],
        }

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict["per_parameter"]
        if len(saved) != len(self._inner) or len(state_dict["param_groups"]) != len(self.param_groups):
            raise ValueError(
                f"optimizer state holds {len(saved)} parameters in {len(state_dict['param_groups'])} "
                f"groups; this model trains {len(self._inner)} in {len(self.param_groups)}"
            )
        for group, settings in zip(self.param_groups, state_dict["param_groups"]):
            group.update(settings)
        for (optimizer, _), state in zip(self._inner.values(), saved):
            optimizer.load_state_dict(state)

    def remove_hooks(self) -> None:
        """Detach from the parameters (after which backward no longer updates them)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
