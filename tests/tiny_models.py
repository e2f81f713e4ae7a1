"""Tiny configurations and inputs shared by the model tests (plain module, imported by test files)."""

import textwrap

import torch

VOCAB_SIZE = 1000
BOS, EOS = 998, 999
PROJECTION_DIM = 24

TEXT = dict(
    vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
    max_position_embeddings=16, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=0, projection_dim=PROJECTION_DIM,
)
VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8,
    projection_dim=PROJECTION_DIM,
)
MODEL = dict(text_config=TEXT, vision_config=VISION, projection_dim=PROJECTION_DIM, logit_scale_init_value=2.6592)


# Start of a subprocess script in which `import dualclip` fails, as where dualclip is not installed.
WITHOUT_DUALCLIP = textwrap.dedent(
    """
    import importlib.abc, json, sys, torch

    class RefuseDualclip(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "dualclip" or name.startswith("dualclip."):
                raise ImportError("dualclip is not installed in this process")
            return None

    sys.meta_path.insert(0, RefuseDualclip())
    """
)
# ... which then loads the folder `sys.argv[1]` with remote code.
LOAD_WITHOUT_DUALCLIP = WITHOUT_DUALCLIP + textwrap.dedent(
    """
    from transformers import AutoModel
    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    """
)


def text_batch(lengths=(5, 16, 9, 2), total=16, seed=0):
    """Right-padded ids (BOS, words, EOS, then zeros) with rows of the given lengths, and their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), total, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(1, BOS, (length,), generator=generator)
        ids[row, 0], ids[row, length - 1] = BOS, EOS
        mask[row, :length] = 1
    return ids, mask


def pixel_batch(batch=3, size=32, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def max_diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()
