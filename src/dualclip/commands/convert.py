"""`dualclip convert SRC OUT`: OpenAI / OpenCLIP / transformers CLIP checkpoints to a dualclip folder (and back)."""

import argparse
import sys

HELP = "convert an OpenAI, OpenCLIP or transformers CLIP checkpoint to a dualclip folder"

EPILOG = """examples:
  dualclip convert ViT-B-32.pt clip-vit-b-32                      OpenAI archive (detected)
  dualclip convert open_clip_hub_folder/ out/                     OpenCLIP hub folder (detected)
  dualclip convert epoch_32.pt out/ --openclip-model ViT-B-32     OpenCLIP training checkpoint
  dualclip convert xlm_roberta_hub_folder/ out/ --hf-text-config xlm-roberta-base/config.json
                                                                  OpenCLIP with a Hugging Face text tower
  dualclip convert openai/clip-vit-base-patch32 out/ --from hf    transformers CLIP folder
  dualclip convert dualclip_folder/ out/ --to hf                  back to stock transformers CLIP
"""


def add_arguments(parser) -> None:
    from dualclip.conversion import DEFAULT_MAX_SHARD_SIZE, DTYPES, SOURCES

    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("src", metavar="SRC", help="checkpoint file, OpenCLIP hub folder or transformers folder")
    parser.add_argument("out", metavar="OUT", help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--from", dest="source", choices=SOURCES, help="source format (detected when omitted)")
    parser.add_argument("--to", choices=("dualclip", "hf"), default="dualclip",
                        help="hf: export a dualclip folder to stock transformers CLIP (default: dualclip)")
    parser.add_argument("--openclip-config", metavar="JSON",
                        help="OpenCLIP model-config JSON (or open_clip_config.json) for a raw checkpoint")
    parser.add_argument("--openclip-model", metavar="NAME",
                        help="standard OpenCLIP model name (e.g. ViT-H-14) for a raw checkpoint")
    parser.add_argument("--hf-text-config", metavar="PATH",
                        help="config.json (or its folder) of an OpenCLIP model's Hugging Face text encoder "
                             "(text_cfg.hf_model_name), when the source folder has no config.json")
    parser.add_argument("--dtype", choices=tuple(DTYPES),
                        help="weights dtype (default: the source's, or float32 when it mixes dtypes)")
    parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, metavar="SIZE",
                        help=f"split weights into shards above this size (default: {DEFAULT_MAX_SHARD_SIZE})")
    parser.add_argument("--verify", action="store_true",
                        help="compare with the reference implementation on fixed inputs (if it is importable)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args) -> int:
    from dualclip.conversion import convert_checkpoint

    result = convert_checkpoint(
        args.src,
        args.out,
        args.source,
        to=args.to,
        openclip_config=args.openclip_config,
        openclip_model=args.openclip_model,
        hf_text_config=args.hf_text_config,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        verify=args.verify,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),
    )
    print(f"wrote {result.output} ({result.model_class}, {result.architecture}, "
          f"{result.num_parameters:,} parameters, {result.dtype})")
    if result.verification is not None:
        print(f"verification: {result.verification.summary()}")
    for note in result.notes:
        print(f"note: {note}")
    return 0
