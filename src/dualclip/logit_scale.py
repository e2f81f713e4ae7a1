"""The training-time cap on the logit scale (OpenCLIP's CLIP recipe), applied after each optimizer step.

`DualClipModel.forward` uses `logit_scale` as it is; when training, OpenAI and OpenCLIP clamp the parameter to
`ln(100)` after every optimizer step so that the temperature cannot run away. `config.logit_scale_max` holds the
cap (`None`: none, as SigLIP trains).

```python
from transformers import Trainer
from dualclip.logit_scale import ClampLogitScaleCallback

Trainer(model=model, args=args, train_dataset=pairs, data_collator=collator, callbacks=[ClampLogitScaleCallback()])
```
"""

import torch
from transformers import TrainerCallback


@torch.no_grad()
def clamp_logit_scale_(model) -> None:
    """Clamps `model.logit_scale` in place to `model.config.logit_scale_max` (no-op when that is `None`)."""
    model = getattr(model, "module", model)  # DDP and accelerate wrappers
    cap = getattr(model.config, "logit_scale_max", None)
    scale = getattr(model, "logit_scale", None)
    if cap is not None and scale is not None:
        scale.clamp_(max=cap)


class ClampLogitScaleCallback(TrainerCallback):
    """`Trainer` callback: `clamp_logit_scale_` after every optimizer step."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is not None:
            clamp_logit_scale_(model)


__all__ = ["ClampLogitScaleCallback", "clamp_logit_scale_"]
