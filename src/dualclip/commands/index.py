"""`dualclip index EMBEDDINGS`: a FAISS index over an embed folder, exact or compressed by size and memory budget."""

HELP = "build a FAISS index over a `dualclip embed` folder (exact or compressed, from size and --max-memory)"


def add_arguments(parser) -> None:
    parser.add_argument("embeddings", metavar="EMBEDDINGS", help="a finished `dualclip embed` output folder")
    parser.add_argument("--output", metavar="DIR", help="index folder (default: EMBEDDINGS/<modality>-index)")
    parser.add_argument("--modality", choices=("image", "text"), default=None,
                        help="which embeddings to index (default: image if the folder has them, else text)")
    parser.add_argument("--type", dest="index_type", choices=("auto", "exact", "compressed"), default="auto",
                        help="auto (default): exact when it fits --max-memory and has at most 1M vectors, else "
                             "IVF-PQ")
    parser.add_argument("--max-memory", default="4GB", metavar="SIZE", help="memory budget of the index (default 4GB)")
    parser.add_argument("--threads", type=int, default=None, help="FAISS threads (default: all cores)")


def run(args) -> int:
    from ..jobs import build_index

    info = build_index(args.embeddings, args.output, modality=args.modality, max_memory=args.max_memory,
                       index_type=args.index_type, threads=args.threads)
    print(f"wrote {info['folder']}: {info['kind']} index ({info['factory']}) of {info['count']} {info['modality']} "
          f"vectors, about {info['bytes'] / 2**20:.1f} MiB, in {info['seconds']:.1f} s ({info['why']})")
    return 0
