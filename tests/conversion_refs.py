"""Reference checkpoints for the conversion tests, made by the reference implementations themselves.

Plain module imported by the `test_conversion_*` files (after conftest has put the torchvision stand-in on the path,
so `clip` and `open_clip` import).
"""

import json
import math
import warnings

import torch
from torch import nn
from torch.nn import functional as F

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

OPENAI_VOCAB = 49408
BOS, EOS = 49406, 49407
TOLERANCE = 1e-5

# OpenAI's released architectures at reduced width and depth, keeping what identifies each one: the patch size, the
# input resolution and (ResNets) the number of blocks per stage. ViTs: vision width 64 (one 64-wide head), ResNets:
# stem width 8 (attention pool 256 wide, 4 heads). Text: width 64, 77 positions, OpenAI's vocabulary.
REDUCED_OPENAI = {
    "ViT-B/32": dict(vision_layers=2, vision_width=64, vision_patch_size=32, image_resolution=224),
    "ViT-B/16": dict(vision_layers=2, vision_width=64, vision_patch_size=16, image_resolution=224),
    "ViT-L/14": dict(vision_layers=2, vision_width=64, vision_patch_size=14, image_resolution=224),
    "ViT-L/14@336px": dict(vision_layers=1, vision_width=64, vision_patch_size=14, image_resolution=336),
    "RN50": dict(vision_layers=(3, 4, 6, 3), vision_width=8, vision_patch_size=None, image_resolution=224),
    "RN101": dict(vision_layers=(3, 4, 23, 3), vision_width=8, vision_patch_size=None, image_resolution=224),
    "RN50x4": dict(vision_layers=(4, 6, 10, 6), vision_width=8, vision_patch_size=None, image_resolution=288),
    "RN50x16": dict(vision_layers=(6, 8, 18, 8), vision_width=8, vision_patch_size=None, image_resolution=384),
    "RN50x64": dict(vision_layers=(3, 15, 36, 10), vision_width=8, vision_patch_size=None, image_resolution=448),
}
REDUCED_TEXT = dict(
    context_length=77, vocab_size=OPENAI_VOCAB, transformer_width=64, transformer_heads=1, transformer_layers=2
)
FULL_OPENAI = {
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                     context_length=77, vocab_size=OPENAI_VOCAB, transformer_width=512, transformer_heads=8,
                     transformer_layers=12),
    "RN50": dict(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64,
                 vision_patch_size=None, context_length=77, vocab_size=OPENAI_VOCAB, transformer_width=512,
                 transformer_heads=8, transformer_layers=12),
}


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0, matrices: bool = True) -> nn.Module:
    """Random weights of a sensible scale everywhere, BatchNorm running statistics included.

    Matrices and kernels: N(0, 1/fan_in) (or, with `matrices=False`, the model's own random initialisation, which is
    faster for full-size models); norm scales: U(0.5, 1.5); other vectors (biases, class token, LayerScale):
    N(0, 0.1); BatchNorm running mean N(0, 0.2) and variance U(0.5, 2). `logit_scale`/`logit_bias` are kept.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith(("logit_scale", "logit_bias")) or (param.dim() >= 2 and not matrices):
            continue
        values = torch.empty(param.shape, dtype=torch.float32)
        if param.dim() >= 2:
            values.normal_(0, math.prod(param.shape[1:]) ** -0.5, generator=generator)
        elif name.endswith("weight"):
            values.uniform_(0.5, 1.5, generator=generator)
        else:
            values.normal_(0, 0.1, generator=generator)
        param.copy_(values)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.copy_(torch.empty(buffer.shape).normal_(0, 0.2, generator=generator))
        elif name.endswith("running_var"):
            buffer.copy_(torch.empty(buffer.shape).uniform_(0.5, 2.0, generator=generator))
    return model.eval()


def openai_model(embed_dim=32, seed=0, **sizes):
    """OpenAI's `clip.model.CLIP` with random weights (float32)."""
    from clip.model import CLIP

    arguments = dict(REDUCED_TEXT, embed_dim=embed_dim)
    arguments.update(sizes)
    return randomize_(CLIP(**arguments), seed)


def save_openai_archive(model, path) -> None:
    """A TorchScript archive as OpenAI released them: weights cast by `convert_weights` (float16 for convolutions,
    linear layers and projections), the traced model, and `input_resolution`/`context_length`/`vocab_size` entries
    in its state dict.

    Only `encode_text` is traced, to keep the tests fast (float16 convolutions are slow on CPU): the archive's
    module hierarchy, and so its state dict, holds every weight whichever methods are traced."""
    from clip.model import convert_weights

    convert_weights(model)
    resolution = model.visual.input_resolution
    for name, value in (("input_resolution", resolution), ("context_length", model.context_length),
                        ("vocab_size", model.vocab_size)):
        if hasattr(model, name):
            delattr(model, name)
        model.register_buffer(name, torch.tensor(value))
    text = torch.zeros(1, model.positional_embedding.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(model, {"encode_text": (text,)}, check_trace=False)
    torch.jit.save(traced, str(path))
    for name in ("input_resolution", "context_length", "vocab_size"):
        delattr(model, name)


def token_batch(vocab_size=OPENAI_VOCAB, context_length=77, eos=None, bos=None, seed=0):
    """Three rows `[BOS] words [EOS] 0 ...` (full length, short, medium), word ids below BOS/EOS."""
    eos = (vocab_size - 1) if eos is None else eos
    if bos is None and vocab_size == OPENAI_VOCAB:
        bos = BOS
    high = min(i for i in (eos, bos) if i is not None)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for words in (context_length - 2, 3, 20):
        row = [bos] if bos is not None else []
        row += torch.randint(1, high, (words,), generator=generator).tolist() + [eos]
        rows.append(row + [0] * (context_length - len(row)))
    return torch.tensor(rows)


def pixels(size, seed=0, batch=2):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _batch_first(tensor, batch):
    return tensor if tensor.shape[0] == batch else tensor.transpose(0, 1)


@torch.no_grad()
def reference_text_states(blocks, final_norm, run, batch) -> tuple[list, torch.Tensor]:
    """Each transformer block's output and the final LayerNorm's output of a reference text tower, by forward hooks
    on its own modules while `run()` encodes the text."""
    captured, hooks = [], []
    for block in blocks:
        hooks.append(block.register_forward_hook(lambda m, i, o: captured.append(_batch_first(o, batch))))
    final = []
    hooks.append(final_norm.register_forward_hook(lambda m, i, o: final.append(_batch_first(o, batch))))
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return captured, final[0]


def assert_close(actual, expected, what, tolerance=TOLERANCE):
    difference = (actual.float() - expected.float()).abs().max().item()
    assert difference <= tolerance, f"{what}: largest difference {difference:.3g} > {tolerance}"


@torch.no_grad()
def compare_with_reference(model, reference, image_size, ids, images=2):
    """Image features, text features, logits and every text hidden state of a converted `DualClipModel` against the
    reference, within 1e-5.

    `reference` holds the reference implementation's callables: `encode_image`, `encode_text`, `logit_scale`,
    optional `logit_bias`, and the text tower's `blocks` and `final_norm` modules (read by forward hooks).
    """
    pixel_values = pixels(image_size, batch=images)
    image_features = reference["encode_image"](pixel_values)
    captured = []
    states, final = reference_text_states(
        reference["blocks"], reference["final_norm"], lambda: captured.append(reference["encode_text"](ids)), len(ids)
    )
    text_features = captured[0]
    # The reference implementations' own logits formula (CLIP.forward / get_logits).
    logits = reference["logit_scale"].exp() * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
    if reference.get("logit_bias") is not None:
        logits = logits + reference["logit_bias"]

    assert_close(model.get_image_features(pixel_values).pooler_output, image_features, "image features")
    assert_close(model.get_text_features(ids).pooler_output, text_features, "text features")
    # The fast API is the reference's own (`encode_image`/`encode_text`): the same features, computed from less.
    assert_close(model.encode_image(pixel_values), image_features, "encode_image")
    assert_close(model.encode_text(ids), text_features, "encode_text")
    # Logits reach exp(logit_scale) (121 for the scale above ln(100) some tests use): 1e-5 relative to that scale.
    logits_tolerance = TOLERANCE * max(1.0, logits.abs().max().item())
    assert_close(model(input_ids=ids, pixel_values=pixel_values).logits_per_image, logits, "logits", logits_tolerance)
    assert_close(model(input_ids=ids, pixel_values=pixel_values, pooled_only=True).logits_per_image, logits,
                 "pooled-only logits", logits_tolerance)
    ours = model.text_model(ids, output_hidden_states=True)
    assert len(ours.hidden_states) == len(states) + 1
    for index, (mine, theirs) in enumerate(zip(ours.hidden_states[1:], states)):
        assert_close(mine, theirs, f"text hidden state {index + 1}")
    assert_close(ours.last_hidden_state, final, "text last hidden state")


def write_json(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)
