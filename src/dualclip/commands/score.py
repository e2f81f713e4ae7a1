"""`dualclip score DATA --output OUT [--keep-above T]`: similarity of every image-caption pair, LAION-style filter."""

from ._jobs import DATA_HELP, DISTRIBUTED_EPILOG, add_input, add_model, add_run, input_options, run_options

HELP = "score every image-caption pair (cosine similarity); --keep-above T writes the filtered table"

EPILOG = """examples:
  dualclip score pairs.parquet --output scores/ --model ./clip-vit-b32 --keep-above 0.28
  dualclip score 'shards/{00000..00099}.tar' --output scores/ --keep-above 0.3

output: NNNNN.parquet (id, path, caption, label, key, similarity) per shard, manifest.json, failures.jsonl and,
with --keep-above, kept.parquet (the pairs with similarity >= T) and kept.json. Rerunning resumes; a rerun with
only another --keep-above recomputes nothing and rewrites kept.parquet.

""" + DISTRIBUTED_EPILOG.format(name="score")


def add_arguments(parser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("data", metavar="DATA", help=DATA_HELP + "; it needs images and captions")
    parser.add_argument("--output", metavar="OUT", required=True, help="output folder")
    parser.add_argument("--keep-above", type=float, metavar="T", default=None,
                        help="also write kept.parquet with the pairs whose cosine similarity is >= T")
    add_model(parser)
    add_input(parser, labels=False)
    add_run(parser)


def run(args) -> int:
    from ..jobs import score
    summary = score(args.data, args.output, args.model, keep_above=args.keep_above, shard_size=args.shard_size,
                    **input_options(args), **run_options(args))
    print(summary["message"])
    return 0
