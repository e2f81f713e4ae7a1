"""`dualclip eval DATA`: zero-shot top-1/top-5, retrieval recall@1/5/10 and linear probe on a local dataset."""

import json

from ._common import format_table
from ._jobs import DATA_HELP, add_input, add_model, add_run, input_options, run_options

HELP = "evaluate a model: zero-shot accuracy, image<->text retrieval recall, linear probe"

EPILOG = """examples:
  dualclip eval digits/                                   class subfolders: zero-shot + linear probe (tiny model)
  dualclip eval val/ --model ./clip-vit-b32 --template "a photo of a {}." --template "a sketch of a {}."
  dualclip eval coco_val.parquet --model ./clip-vit-b32 --task retrieval
  dualclip eval test/ --train train/ --task linear-probe --json results.json
"""


def add_arguments(parser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("data", metavar="DATA", help=DATA_HELP)
    parser.add_argument("--task", dest="tasks", action="append", choices=("zeroshot", "retrieval", "linear-probe"),
                        help="repeatable (default: zero-shot and linear probe with labels, retrieval with captions)")
    parser.add_argument("--template", dest="templates", action="append", metavar="TEMPLATE",
                        help='zero-shot prompt with {} for the class name, repeatable (default "a photo of a {}."; '
                             'the tiny model: "a handwritten digit {}")')
    parser.add_argument("--class-names", nargs="+", metavar="NAME",
                        help="names for the classes, in label order (default: folder names / ClassLabel names)")
    parser.add_argument("--train", metavar="DATA", help="labelled training data for the linear probe "
                        "(default: a stratified split of DATA)")
    parser.add_argument("--train-split", metavar="NAME", help="datasets split to train the probe on")
    parser.add_argument("--probe-test-fraction", type=float, default=0.25,
                        help="held-out part of DATA for the probe when no --train (default 0.25)")
    parser.add_argument("--probe-c", type=float, nargs="+", default=[0.1, 1.0, 10.0, 100.0], metavar="C",
                        help="logistic-regression C values; several: chosen on 20%% of the training data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-': JSON on stdout only)")
    add_model(parser)
    add_input(parser, shards=False)
    add_run(parser, distributed=False)


def _table(results: dict) -> str:
    rows = []
    if "zeroshot" in results:
        z = results["zeroshot"]
        rows.append(["zero-shot", "top-1", f"{z['top1']:.4f}"])
        if "top5" in z:
            rows.append(["zero-shot", "top-5", f"{z['top5']:.4f}"])
    if "retrieval" in results:
        r = results["retrieval"]
        for direction, name in (("image_to_text", "image->text"), ("text_to_image", "text->image")):
            for key, value in r[direction].items():
                rows.append([f"retrieval {name}", key, f"{value:.4f}"])
    if "linear_probe" in results:
        p = results["linear_probe"]
        rows.append(["linear probe", f"top-1 (C={p['C']:g})", f"{p['top1']:.4f}"])
    return format_table(["task", "metric", "value"], rows)


def run(args) -> int:
    from ..jobs import evaluate
    options = run_options(args)
    results = evaluate(args.data, args.model, tasks=args.tasks, templates=args.templates,
                       class_names=args.class_names, train=args.train, train_split=args.train_split,
                       probe_test_fraction=args.probe_test_fraction, probe_c=args.probe_c, seed=args.seed,
                       **input_options(args), **options)
    if args.json == "-":
        print(json.dumps(results, indent=1))
        return 0
    print(f"model: {results['model']}\ndata: {results['data']} ({results['images']} images"
          + (f", {len(results['failures'])} unreadable skipped" if results["failures"] else "") + ")\n")
    print(_table(results))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)
            file.write("\n")
    return 0
