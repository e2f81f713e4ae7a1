"""The logit scale is capped while training (after each optimizer step), never in forward."""

import math

import pytest
import torch
from tiny_models import MODEL, pixel_batch, text_batch
from transformers import Trainer, TrainingArguments

from dualclip import DualClipConfig, DualClipModel
from dualclip.logit_scale import ClampLogitScaleCallback, clamp_logit_scale_


class _Pairs(torch.utils.data.Dataset):
    def __init__(self):
        self.ids, self.mask = text_batch()
        self.pixels = pixel_batch(batch=4)

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return dict(input_ids=self.ids[index], attention_mask=self.mask[index], pixel_values=self.pixels[index],
                    return_loss=True)


def _collate(rows):
    batch = {key: torch.stack([row[key] for row in rows]) for key in ("input_ids", "attention_mask", "pixel_values")}
    return {**batch, "return_loss": True}


@pytest.mark.parametrize("cap", [math.log(100.0), None])
def test_trainer_with_the_callback_caps_after_each_step(tmp_path, cap):
    torch.manual_seed(0)
    model = DualClipModel(DualClipConfig(**MODEL, logit_scale_max=cap))
    with torch.no_grad():
        model.logit_scale.fill_(5.0)  # above ln(100), as a converted SigLIP SO400M (4.72) or a runaway run
    args = TrainingArguments(tmp_path, max_steps=2, per_device_train_batch_size=4, learning_rate=1e-4,
                             report_to=[], save_strategy="no", use_cpu=True, remove_unused_columns=False)
    Trainer(model=model, args=args, train_dataset=_Pairs(), data_collator=_collate,
            callbacks=[ClampLogitScaleCallback()]).train()
    if cap is None:
        assert model.logit_scale.item() > math.log(100.0) + 0.3  # no cap configured: nothing clamps
    else:
        # two steps of lr 1e-4 move it by far less than the 0.39 it started above the cap: the callback clamped it
        assert cap - 1e-3 < model.logit_scale.item() <= cap


def test_clamp_is_a_no_op_below_the_cap_and_forward_never_clamps():
    torch.manual_seed(0)
    model = DualClipModel(DualClipConfig(**MODEL)).eval()
    clamp_logit_scale_(model)
    assert model.logit_scale.item() == pytest.approx(2.6592)
    with torch.no_grad():
        model.logit_scale.fill_(6.0)
        ids, mask = text_batch()
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixel_batch(batch=4))
    expected = out.text_embeds @ out.image_embeds.T * math.exp(6.0)
    assert torch.allclose(out.logits_per_text, expected, rtol=1e-5)
