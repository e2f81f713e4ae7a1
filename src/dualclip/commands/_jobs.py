"""Options shared by the dataset-job subcommands (`embed`, `score`, `eval`): input, model and run options."""

import argparse

DATA_HELP = (
    "a folder of images (class subfolders = labels), a list of paths (.txt), a table (.csv/.tsv/.jsonl/.parquet "
    "with path/caption/label columns), webdataset tars (data/{00000..00099}.tar) or a folder saved by datasets"
)

DISTRIBUTED_EPILOG = """several processes (GPUs, machines): start the same command under a launcher; each process takes
whole shards (process r of n: shards r, r+n, ...) and a rerun skips finished ones:
  accelerate launch --multi_gpu --num_processes 8 -m dualclip {name} ...
  torchrun --nnodes 2 --nproc_per_node 8 --rdzv_endpoint HOST:29500 -m dualclip {name} ...
  or, without a launcher: --process-index I --num-processes N
"""


def add_model(parser) -> None:
    parser.add_argument("--model", metavar="FOLDER|ID", default=None,
                        help="model folder or hub id (from the local cache); default: the embedded tiny-digits model")


def add_input(parser, shards: bool = True, labels: bool = True) -> None:
    group = parser.add_argument_group("input")
    group.add_argument("--path-column", metavar="NAME", help="table column with image paths (default: path, image, "
                       "filepath, file, ...)")
    group.add_argument("--caption-column", metavar="NAME", help="table column with captions (default: caption, text)")
    if labels:
        group.add_argument("--label-column", metavar="NAME", help="table column with labels (default: label, class)")
    group.add_argument("--split", metavar="NAME", help="split of a saved datasets DatasetDict")
    if shards:
        group.add_argument("--shard-size", type=int, default=10_000, metavar="N",
                           help="items per output shard for folders, lists, tables and datasets (default 10000; "
                                "webdataset: one output shard per tar)")


def add_run(parser, distributed: bool = True) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--batch-size", type=int, default=256, metavar="N", help="items per model call (default 256)")
    group.add_argument("--workers", type=int, default=None, metavar="N",
                       help="DataLoader processes decoding images (default: spare cores, at most 8; 0: none)")
    group.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                       help="compute dtype (default auto: bfloat16/float16 on GPU, float32 on CPU)")
    group.add_argument("--device", default=None, help="torch device (default: this process's GPU, else cpu)")
    group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="progress bar with items/s (default: when stderr is a terminal)")
    if distributed:
        group.add_argument("--process-index", type=int, default=None, metavar="I",
                           help="this process's number (default: $RANK from accelerate/torchrun, else 0)")
        group.add_argument("--num-processes", type=int, default=None, metavar="N",
                           help="number of processes sharing the job (default: $WORLD_SIZE, else 1)")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def input_options(args) -> dict:
    options = {"path_column": args.path_column, "caption_column": args.caption_column, "split": args.split}
    if hasattr(args, "label_column"):
        options["label_column"] = args.label_column
    return options


def run_options(args) -> dict:
    options = {"batch_size": args.batch_size, "workers": args.workers, "dtype": args.dtype, "device": args.device,
               "progress": args.progress}
    if hasattr(args, "process_index"):
        options["rank"], options["world_size"] = args.process_index, args.num_processes
    return options
