"""`dualclip demo`: the embedded tiny model classifies handwritten digits it never saw in training. Offline."""

from ._common import format_table, load_model_and_processor, quiet_loading, top_k_cells

HELP = "zero-shot classify held-out handwritten digits with the embedded tiny model (offline)"


def add_arguments(parser) -> None:
    parser.add_argument("--count", type=int, default=12, help="images listed in the table (default 12)")
    parser.add_argument("--top-k", type=int, default=3, help="labels shown per image (default 3)")
    parser.add_argument("--wrong", action="store_true", help="list the misclassified images instead of the first ones")


def run(args) -> int:
    import numpy as np

    from ..tiny_model import DIGIT_NAMES, DIGIT_TEMPLATE, HELDOUT_START, TINY_MODEL_PATH, load_heldout_digits
    from ..zero_shot import classify

    if args.count < 0:
        raise ValueError(f"--count must be 0 or more, got {args.count}")
    if not 1 <= args.top_k <= len(DIGIT_NAMES):
        raise ValueError(f"--top-k must be between 1 and {len(DIGIT_NAMES)}, got {args.top_k}")
    images, labels = load_heldout_digits()
    quiet_loading()
    model, processor = load_model_and_processor(TINY_MODEL_PATH)
    probabilities = classify(model, processor, list(images), DIGIT_NAMES, template=DIGIT_TEMPLATE)
    predictions = probabilities.argmax(axis=1)

    last = HELDOUT_START + len(labels) - 1
    print(f"model: {TINY_MODEL_PATH}")
    print(f'captions: "{DIGIT_TEMPLATE.format("{" + ", ".join(DIGIT_NAMES) + "}")}"')
    print(f"images: scikit-learn digits {HELDOUT_START}-{last}, never seen in training\n")
    rows = [
        [
            str(HELDOUT_START + i),
            DIGIT_NAMES[labels[i]],
            *top_k_cells(probabilities[i], DIGIT_NAMES, args.top_k),
            "ok" if predictions[i] == labels[i] else "WRONG",
        ]
        for i in (np.flatnonzero(predictions != labels) if args.wrong else range(len(labels)))[: args.count]
    ]
    if rows:
        header = ["image", "true", *(f"top-{i + 1}" for i in range(args.top_k)), ""]
        print(format_table(header, rows))
        print()
    correct = int((predictions == labels).sum())
    print(f"held-out accuracy: {correct / len(labels):.4f} ({correct} of {len(labels)} images)")
    return 0
