"""`dualclip embed --text ... | --images ...`: L2-normalised embeddings from any model folder, as a .npy file."""

import sys

from ._common import add_model_argument, quiet_loading, model_folder, open_images

HELP = "write normalised text or image embeddings (.npy, or text on stdout)"


def add_arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", nargs="+", metavar="TEXT", help="texts to embed (truncated to the model's context)")
    source.add_argument("--images", nargs="+", metavar="IMAGE", help="image files to embed")
    parser.add_argument(
        "--output", metavar="FILE.npy", help="write a float32 (n, dim) array here; default: print rows to stdout"
    )
    add_model_argument(parser)


def run(args) -> int:
    import numpy as np

    from ..zero_shot import embed_images, embed_texts, load_model_and_processor

    if args.output is not None and not args.output.endswith(".npy"):
        raise ValueError(f"--output must name a .npy file, got {args.output!r}")
    images = open_images(args.images) if args.images else None
    quiet_loading()
    model, processor = load_model_and_processor(model_folder(args))
    if images is not None:
        embeddings = embed_images(model, processor, images)
    else:
        embeddings = embed_texts(model, processor, args.text)
    embeddings = embeddings.numpy().astype(np.float32)
    if args.output is None:
        np.savetxt(sys.stdout, embeddings, fmt="%.6f")
    else:
        np.save(args.output, embeddings)
        print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} normalised embeddings to {args.output}")
    return 0
