"""dualclip text encoders in a diffusers SDXL pipeline, with a long weighted prompt encoded as AUTOMATIC1111,
ComfyUI or compel would encode it.

Runs offline in seconds with tiny random components (the images are noise; the plumbing is real):

    python examples/diffusion_conditioning.py                    # A1111's rules (the default)
    python examples/diffusion_conditioning.py --syntax comfyui
    python examples/diffusion_conditioning.py --syntax compel

With a local SDXL folder (diffusers layout), the same code swaps dualclip encoders into the real pipeline:

    python examples/diffusion_conditioning.py --pipeline /path/to/stable-diffusion-xl-base-1.0 --steps 30
"""

import argparse

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

from dualclip import DualClipTextConfig, DualClipTextModel, DualClipTextModelWithProjection
from dualclip.conditioning import PromptEncoder, parse_a1111, parse_comfyui, parse_compel
from dualclip.tokenization_dualclip import DualClipTokenizer

PROMPT = (
    "a (cozy:1.3) wooden cabin in a snowy pine forest at dusk, warm light in the windows, smoke rising from the "
    "chimney, ((fresh powder snow)) on the roof, a frozen lake in the foreground reflecting the sky, "
    "[people], aurora borealis over the mountains, glowing lanterns along a narrow path, a sleeping husky by the "
    "door, intricate carved wood, icicles hanging from the eaves, highly detailed, photorealistic, 35mm photograph, "
    "soft volumetric light, film grain BREAK color palette of deep blue, teal and amber, \\(award winning\\) composition"
)
NEGATIVE = "blurry, lowres, (watermark:1.4), text"
# the same picture in compel's syntax: weights written after the words, no BREAK
COMPEL_PROMPT = (
    "a (cozy)1.3 wooden cabin in a snowy pine forest at dusk, warm light in the windows, smoke rising from the "
    "chimney, (fresh powder snow)++ on the roof, a frozen lake in the foreground reflecting the sky, "
    "people-, aurora borealis over the mountains, glowing lanterns along a narrow path, a sleeping husky by the "
    "door, intricate carved wood, icicles hanging from the eaves, highly detailed, photorealistic, 35mm photograph, "
    "soft volumetric light, film grain. color palette of deep blue, teal and amber, award winning composition"
)
COMPEL_NEGATIVE = "blurry, lowres, (watermark)1.4, text"
PARSERS = {"a1111": parse_a1111, "comfyui": parse_comfyui, "compel": parse_compel}


def tiny_random_pipeline() -> StableDiffusionXLPipeline:
    """SDXL with random 32-wide components: OpenAI's real BPE vocabulary, tiny towers, tiny UNet and VAE."""
    torch.manual_seed(0)
    text = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4, projection_dim=32,
                hidden_act="gelu")
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    )
    return StableDiffusionXLPipeline(
        unet=unet, vae=vae, scheduler=EulerDiscreteScheduler(timestep_spacing="leading", steps_offset=1),
        text_encoder=DualClipTextModel(DualClipTextConfig(**text)),
        text_encoder_2=DualClipTextModelWithProjection(DualClipTextConfig(**text)),
        # SDXL's first tokenizer pads with end-of-text, its second with "!" (id 0)
        tokenizer=DualClipTokenizer(pad_token="<|endoftext|>"), tokenizer_2=DualClipTokenizer(pad_token="!"),
    )


def local_pipeline(path: str) -> StableDiffusionXLPipeline:
    """A local SDXL folder with its stock CLIP encoders replaced by dualclip's, loaded from the same weights."""
    return StableDiffusionXLPipeline.from_pretrained(
        path,
        text_encoder=DualClipTextModel.from_pretrained(path, subfolder="text_encoder"),
        text_encoder_2=DualClipTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2"),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", help="local SDXL pipeline folder (default: tiny random components)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--syntax", choices=sorted(PARSERS), default="a1111", help="whose prompt rules to follow")
    parser.add_argument("--clip-skip", type=int, default=None, help="diffusers' numbering: 1 is A1111's 'Clip skip: 2'")
    parser.add_argument("--output", default=None, help="save the image here (PNG)")
    args = parser.parse_args()

    pipe = local_pipeline(args.pipeline) if args.pipeline else tiny_random_pipeline()
    pipe.set_progress_bar_config(disable=True)
    size = {} if args.pipeline else {"height": 32, "width": 32}

    prompt, negative = (COMPEL_PROMPT, COMPEL_NEGATIVE) if args.syntax == "compel" else (PROMPT, NEGATIVE)
    print(f"{args.syntax} reads the prompt as:", PARSERS[args.syntax](prompt))
    encoder = PromptEncoder.from_pipeline(pipe, syntax=args.syntax, clip_skip=args.clip_skip)
    embeds = encoder.encode(prompt, negative_prompt=negative)
    for name, tensor in embeds.items():
        print(f"{name}: {tuple(tensor.shape)}")

    image = pipe(**embeds, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0), **size).images[0]
    print("image:", image.size)
    if args.output:
        image.save(args.output)


if __name__ == "__main__":
    main()
