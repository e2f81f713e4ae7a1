"""`dualclip search INDEX --text ... | --image ... | --embedding FILE.npy`: nearest items of a FAISS index."""

import json
import os

from ._common import format_table

HELP = "search a `dualclip index` by text, image file or embedding: top-k ids, paths, captions, scores"


def add_arguments(parser) -> None:
    parser.add_argument("index", metavar="INDEX", help="an index folder (or the embed folder holding image-index/)")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", nargs="+", metavar="TEXT", help="text queries")
    query.add_argument("--image", nargs="+", metavar="IMAGE", help="image file queries")
    query.add_argument("--embedding", metavar="FILE.npy", help="query embeddings, one per row")
    parser.add_argument("-k", "--top-k", dest="k", type=int, default=10, help="results per query (default 10)")
    parser.add_argument("--nprobe", type=int, default=None, help="inverted lists visited (compressed indexes)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--model", metavar="FOLDER|ID", default=None,
                        help="model for text/image queries (default: the one that made the embeddings)")
    parser.add_argument("--device", default=None)


def _index_folder(path: str) -> str:
    if os.path.isfile(os.path.join(path, "index.json")) or not os.path.isdir(path):
        return path
    for modality in ("image", "text"):
        if os.path.isfile(os.path.join(path, f"{modality}-index", "index.json")):
            return os.path.join(path, f"{modality}-index")
    return path


def run(args) -> int:
    from ..jobs import search

    queries = args.text or args.image or [args.embedding]
    results = search(_index_folder(args.index), texts=args.text, images=args.image, embeddings=args.embedding,
                     k=args.k, nprobe=args.nprobe, model=args.model, device=args.device)
    if args.embedding is not None:
        queries = [f"{args.embedding}[{i}]" for i in range(len(results))]
    if args.json:
        print(json.dumps([{"query": q, "results": hits} for q, hits in zip(queries, results)], indent=1))
        return 0
    for number, (query, hits) in enumerate(zip(queries, results)):
        if number:
            print()
        print(f"query: {query}")
        rows = [[str(h["rank"]), str(h["id"]), f"{h['score']:.4f}", h["path"] or "", h["caption"] or ""]
                for h in hits]
        print(format_table(["rank", "id", "score", "path", "caption"], rows))
    return 0
