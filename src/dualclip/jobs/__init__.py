"""Dataset jobs: embed, score, index/search and evaluate, streaming, resumable and split across processes.

```python
from dualclip.jobs import embed, score, build_index, search, evaluate

embed("photos/", "photos-emb/")                              # the embedded tiny model by default
build_index("photos-emb/")                                   # photos-emb/image-index/
search("photos-emb/image-index", texts=["a handwritten digit three"], k=5)
score("pairs.parquet", "scores/", model="./clip-vit-b32", keep_above=0.28)
evaluate("digits/")                                          # zero-shot + linear probe on class subfolders
```

Modules: `sources` (inputs), `decoding` (one image or the reason it is unusable), `stream` (DataLoader batches),
`model` (loading, fast pooled features), `runner` (the shared loop), `output` (manifest, atomic shards, resume),
`distributed` (which process owns which shard), `embed`, `score`, `index`, `search`, `evaluate`.
"""

from .embed import embed
from .evaluate import evaluate
from .index import build_index
from .score import score
from .search import search
from .sources import open_source

__all__ = ["embed", "score", "build_index", "search", "evaluate", "open_source"]
