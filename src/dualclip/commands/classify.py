"""`dualclip classify IMAGE... --labels A B C`: zero-shot classification of image files with any model folder."""

import sys

from ._common import (
    add_model_argument,
    format_table,
    load_model_and_processor,
    model_folder,
    open_images,
    quiet_loading,
    top_k_cells,
)

HELP = "zero-shot classify image files against a list of labels"


def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--labels", nargs="+", required=True, metavar="LABEL", help="candidate labels")
    parser.add_argument(
        "--template",
        default="{}",
        help='caption made from each label, with {} where the label goes (default "{}"; CLIP models: '
        '"a photo of a {}."; the tiny model: "a handwritten digit {}")',
    )
    parser.add_argument("--top-k", type=int, default=3, help="labels shown per image (default 3)")
    add_model_argument(parser)


def run(args) -> int:
    from ..zero_shot import classify, format_labels

    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    format_labels(args.labels, args.template)  # bad --template fails before the model loads
    images = open_images(args.images)
    _warn_if_the_tiny_model_sees_other_images(model_folder(args), images)
    quiet_loading()
    model, processor = load_model_and_processor(model_folder(args))
    probabilities = classify(model, processor, images, args.labels, template=args.template)
    k = min(args.top_k, len(args.labels))
    header = ["image", *(f"top-{i + 1}" for i in range(k))]
    rows = [[path, *top_k_cells(row, args.labels, k)] for path, row in zip(args.images, probabilities)]
    print(format_table(header, rows))
    return 0


def _warn_if_the_tiny_model_sees_other_images(folder, images) -> None:
    """The embedded model knows only 8x8 handwritten digits: say so once instead of printing confident nonsense."""
    from ..tiny_model import TINY_MODEL_PATH

    sizes = {image.size for image in images} - {(8, 8)}
    if str(folder) == str(TINY_MODEL_PATH) and sizes:
        width, height = sorted(sizes)[0]
        print(
            f"warning: the embedded tiny model was trained only on 8x8 handwritten digits, and these images are "
            f"{width}x{height}; its results on them mean little. Pass --model with a real CLIP model folder.",
            file=sys.stderr,
        )
