"""Tiny random diffusion components shared by the diffusion tests (plain module, imported by test files).

Text encoders use OpenAI's full BPE vocabulary (49,408 ids) so that real tokenizers drive them, with 32-wide,
3-layer towers. UNets and VAEs are sized like diffusers' own fast tests.
"""

import json
import os

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from dualclip.tokenization_dualclip import DualClipTokenizer, load_openai_bpe

HIDDEN = 32
LAYERS = 3
PROJECTION = 32
EOS_TOKEN = "<|endoftext|>"
# One-token words of OpenAI's vocabulary, for prompts of known token counts.
WORDS = "cat dog house tree river mountain city night red blue green light dark old new small big".split()


def clip_text_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408, hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=LAYERS, num_attention_heads=4,
        hidden_act="gelu", projection_dim=PROJECTION, pad_token_id=1, bos_token_id=49406, eos_token_id=49407,
    )


def save_stock_text_encoders(folder: str, seed: int = 0) -> dict[str, str]:
    """Saves a random stock `CLIPTextModel` and `CLIPTextModelWithProjection` as transformers writes them."""
    torch.manual_seed(seed)
    paths = {"text_encoder": os.path.join(folder, "text_encoder"), "text_encoder_2": os.path.join(folder, "text_encoder_2")}
    CLIPTextModel(clip_text_config()).save_pretrained(paths["text_encoder"])
    CLIPTextModelWithProjection(clip_text_config()).save_pretrained(paths["text_encoder_2"])
    return paths


def tokenizer(pad_token: str = "!"):
    """SD-1 and SDXL's first tokenizer pad with EOS (`pad_token=EOS_TOKEN`); SD-2 and SDXL's second with `!`."""
    return DualClipTokenizer(pad_token=pad_token)


def stock_clip_tokenizer(folder: str, pad_token: str = EOS_TOKEN) -> CLIPTokenizer:
    """transformers' own `CLIPTokenizer`, built offline from the BPE file shipped in the package."""
    vocab, merges = load_openai_bpe()
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(pair) for pair in merges) + "\n")
    return CLIPTokenizer(vocab=os.path.join(folder, "vocab.json"), merges=os.path.join(folder, "merges.txt"),
                         pad_token=pad_token, model_max_length=77)


def sd_unet_and_vae(cross_attention_dim: int = HIDDEN):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
    )
    return unet.eval(), _tiny_vae()


def sdxl_unet_and_vae():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        # time ids (6 values x 8 channels) plus the pooled text embedding of the second encoder
        projection_class_embeddings_input_dim=6 * 8 + PROJECTION, cross_attention_dim=2 * HIDDEN, norm_num_groups=1,
    )
    return unet.eval(), _tiny_vae()


def _tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    ).eval()


def sd_pipeline(unet, vae, text_encoder, tok):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tok,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_pipeline(unet, vae, text_encoder, text_encoder_2, tok, tok_2):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(unet=unet, vae=vae, scheduler=scheduler, text_encoder=text_encoder,
                                     text_encoder_2=text_encoder_2, tokenizer=tok, tokenizer_2=tok_2)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, **kwargs):
    """Two denoising steps at 32x32 with a fixed generator; returns the images as a numpy array."""
    kwargs = {"num_inference_steps": 2, "height": 32, "width": 32, "output_type": "np", **kwargs}
    return pipe(generator=torch.Generator().manual_seed(0), **kwargs).images


def one_torch_thread():
    """Generator for a module-scoped autouse fixture: these models are far too small to gain from intra-op threads,
    and on a shared machine the threads' contention makes each tiny op many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Fixtures the prompt tests import: the two tokenizer paddings of SDXL (SD 1.x pads with EOS, its second encoder "!").
@pytest.fixture(scope="module")
def tok():
    return tokenizer(EOS_TOKEN)


@pytest.fixture(scope="module")
def tok_2():
    return tokenizer("!")
