"""`dualclip embed DATA --output OUT`: a dataset's images and/or captions -> a sharded, resumable embedding folder.
`dualclip embed --text ... | --images ...`: a few texts or image files -> one .npy (or rows on stdout)."""

import sys

from ._jobs import DATA_HELP, DISTRIBUTED_EPILOG, add_input, add_model, add_run, input_options, run_options

HELP = "embed a dataset's images and/or captions into a sharded, resumable folder (or a few texts/images)"

EPILOG = """examples:
  dualclip embed photos/ --output photos-emb/                      every image below photos/
  dualclip embed pairs.parquet --output emb/ --modality both         images and captions of a table
  dualclip embed 'shards/{00000..00099}.tar' --output emb/ --model ./clip-vit-b32 --batch-size 512
  dualclip embed --text "a photo of a cat" "a photo of a dog" --output text.npy

output: NNNNN.image.npy / NNNNN.text.npy (unit rows, float16 by default), NNNNN.parquet (id, path, caption,
label, key), NNNNN.done.json per finished shard, manifest.json, failures.jsonl. Rerunning the same command
resumes; a rerun with other settings is refused.

""" + DISTRIBUTED_EPILOG.format(name="embed")


def add_arguments(parser) -> None:
    parser.epilog = EPILOG
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("data", nargs="?", metavar="DATA", help=DATA_HELP)
    source.add_argument("--text", nargs="+", metavar="TEXT", help="texts to embed (no dataset: one .npy or stdout)")
    source.add_argument("--images", nargs="+", metavar="IMAGE", help="image files to embed (no dataset)")
    parser.add_argument("--output", metavar="OUT",
                        help="output folder for DATA (required); with --text/--images a .npy file (default: stdout)")
    parser.add_argument("--modality", default="auto", choices=("auto", "image", "text", "both"),
                        help="what to embed (default auto: images when there are any, captions when there are any)")
    parser.add_argument("--output-dtype", default="float16", choices=("float16", "float32"),
                        help="dtype of the .npy files (default float16)")
    add_model(parser)
    add_input(parser)
    add_run(parser)


def run(args) -> int:
    if args.data is None:
        return _run_quick(args)
    if not args.output:
        raise ValueError("--output OUT (a folder) is required when embedding a dataset")
    from ..jobs import embed
    summary = embed(args.data, args.output, args.model, modality=args.modality, shard_size=args.shard_size,
                    output_dtype=args.output_dtype, **input_options(args), **run_options(args))
    print(summary["message"])
    return 0


def _run_quick(args) -> int:
    """A handful of texts or image files, embedded in memory: float32 unit rows to a .npy file or stdout."""
    import numpy as np
    import torch

    from ..jobs.model import image_features, load_job_model, normalized, text_features, warn_if_not_digits
    from ._common import open_images

    if args.output is not None and not args.output.endswith(".npy"):
        raise ValueError(f"--output must name a .npy file, got {args.output!r}")
    images = open_images(args.images) if args.images else None
    job_model = load_job_model(args.model, args.device, args.dtype)
    processor, model, batch = job_model.processor, job_model.model, args.batch_size
    parts = []
    with torch.inference_mode():
        if images is not None:
            warn_if_not_digits(job_model, images[0].size)
            for start in range(0, len(images), batch):
                pixels = processor.image_processor(images=images[start : start + batch], return_tensors="pt")
                pixels = pixels["pixel_values"].to(job_model.device, job_model.dtype)
                parts.append(normalized(image_features(model, pixels)).cpu())
        else:
            for start in range(0, len(args.text), batch):
                tokens = processor.tokenizer(args.text[start : start + batch], padding="longest", truncation=True,
                                             return_tensors="pt")
                parts.append(normalized(text_features(model, tokens["input_ids"].to(job_model.device),
                                                      tokens["attention_mask"].to(job_model.device))).cpu())
    embeddings = torch.cat(parts).numpy().astype(np.float32)
    if args.output is None:
        np.savetxt(sys.stdout, embeddings, fmt="%.6f")
    else:
        np.save(args.output, embeddings)
        print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} normalised embeddings to {args.output}")
    return 0
