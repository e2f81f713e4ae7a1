"""`eval`: zero-shot classification, image<->text retrieval and linear probe of a model on a local dataset.

- **zero-shot** (labelled images): each class name goes through every prompt template, the template embeddings are
  averaged and re-normalised (CLIP's prompt ensembling), and each image takes the most similar class: top-1/top-5.
- **retrieval** (images with captions): recall@1/5/10 both ways. Identical captions are one text and rows with the
  same image path are one image; a hit is any caption (image) paired with the query in the data, so COCO-style
  data (several captions per image) is scored as in CLIP_benchmark.
- **linear probe** (labelled images): logistic regression on the frozen image embeddings (the CLIP paper's measure
  of representation quality), trained on `train` data or on a stratified split, `C` picked on a validation part of
  the training data when several are given.

Everything runs in one process, with the embeddings in memory.
"""

from __future__ import annotations

import numpy as np

from .distributed import process_position
from .model import load_job_model, normalized, text_features
from .runner import run_shards
from .sources import DEFAULT_SHARD_SIZE, open_source

__all__ = ["evaluate", "zero_shot_scores", "retrieval_recall", "linear_probe", "TASKS"]

TASKS = ("zeroshot", "retrieval", "linear-probe")
DEFAULT_PROBE_C = (0.1, 1.0, 10.0, 100.0)
RECALL_AT = (1, 5, 10)


def _collect(job_model, source, images: bool, texts: bool, batch_size: int, workers, progress) -> dict:
    rows, failures, features = [], [], {"image": [], "text": []}

    def keep(result):
        rows.extend(result.rows)
        failures.extend({"id": f["id"], "path": f["path"], "reason": f["reason"]} for f in result.failures)
        for name in features:
            if name in result.features:
                features[name].append(result.features[name])

    run_shards(job_model, source, list(range(source.num_shards)), images=images, texts=texts,
               batch_size=batch_size, workers=workers, on_shard=keep, progress=progress)
    dim = job_model.dim
    return {"rows": rows, "failures": failures,
            **{name: np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
               for name, parts in features.items()}}


def class_embeddings(job_model, class_names, templates) -> np.ndarray:
    """`(classes, dim)`: per class, the mean of its unit template embeddings, re-normalised."""
    import torch

    from ..zero_shot import format_labels

    tokenizer = job_model.processor.tokenizer
    per_template = []
    with torch.inference_mode():
        for template in templates:
            tokens = tokenizer(format_labels(class_names, template), padding="longest", truncation=True,
                               return_tensors="pt")
            features = text_features(job_model.model, tokens["input_ids"].to(job_model.device),
                                     tokens["attention_mask"].to(job_model.device))
            per_template.append(normalized(features).cpu())
    return normalized(torch.stack(per_template).mean(0)).numpy()


def zero_shot_scores(image: np.ndarray, classes: np.ndarray, labels: np.ndarray) -> dict:
    scores = image @ classes.T
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = order == labels[:, None]
    result = {"top1": float(hits[:, :1].any(1).mean())}
    if classes.shape[0] >= 5:
        result["top5"] = float(hits[:, :5].any(1).mean())
    return result


def _recall(scores: np.ndarray, positives: list[set]) -> dict:
    order = np.argsort(-scores, axis=1, kind="stable")
    first = np.array([next(r for r, item in enumerate(row) if item in wanted) for row, wanted in zip(order, positives)])
    return {f"R@{k}": float((first < k).mean()) for k in RECALL_AT}


def retrieval_recall(image: np.ndarray, text: np.ndarray, image_keys: list, captions: list) -> dict:
    """Recall@k both ways for rows pairing `image[i]` (identified by `image_keys[i]`) with `captions[i]`."""
    image_index, text_index = {}, {}
    image_rows, text_rows, pairs = [], [], set()
    for row, (key, caption) in enumerate(zip(image_keys, captions)):
        if key not in image_index:
            image_index[key] = len(image_rows)
            image_rows.append(row)
        if caption not in text_index:
            text_index[caption] = len(text_rows)
            text_rows.append(row)
        pairs.add((image_index[key], text_index[caption]))
    images, texts = image[image_rows], text[text_rows]
    texts_of = [set() for _ in image_rows]
    images_of = [set() for _ in text_rows]
    for i, t in pairs:
        texts_of[i].add(t)
        images_of[t].add(i)
    scores = images @ texts.T
    return {"image_to_text": _recall(scores, texts_of), "text_to_image": _recall(scores.T, images_of),
            "images": len(image_rows), "texts": len(text_rows)}


def linear_probe(train_x, train_y, test_x, test_y, cs=DEFAULT_PROBE_C, seed: int = 0, max_iter: int = 1000) -> dict:
    """Logistic regression on frozen features; with several `cs`, C is chosen on a stratified 20% of the training
    data, then the model is refit on all of it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    cs = [float(c) for c in cs]
    chosen, validation = cs[0], None
    if len(cs) > 1:
        fit_x, val_x, fit_y, val_y = train_test_split(train_x, train_y, test_size=0.2, random_state=seed,
                                                      stratify=train_y)
        validation = {}
        for c in cs:
            model = LogisticRegression(C=c, max_iter=max_iter).fit(fit_x, fit_y)
            validation[c] = float(model.score(val_x, val_y))
        chosen = max(cs, key=lambda c: (validation[c], -c))
    model = LogisticRegression(C=chosen, max_iter=max_iter).fit(train_x, train_y)
    result = {"top1": float(model.score(test_x, test_y)), "C": chosen, "train": int(len(train_y)),
              "test": int(len(test_y))}
    if validation is not None:
        result["validation_top1"] = {str(c): v for c, v in validation.items()}
    return result


def _labelled(collected: dict, what: str) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([-1 if row["label"] is None else row["label"] for row in collected["rows"]], np.int64)
    if len(labels) == 0 or (labels < 0).any():
        raise ValueError(f"{what} needs a label for every image: class subfolders, a label column or a ClassLabel")
    return collected["image"], labels


def evaluate(data, model=None, *, tasks=None, templates=None, class_names=None, train=None,
             probe_test_fraction: float = 0.25, probe_c=DEFAULT_PROBE_C, seed: int = 0, batch_size: int = 256,
             workers: int | None = None, dtype: str = "auto", device=None, progress: bool | None = None,
             path_column=None, caption_column=None, label_column=None, split=None, train_split=None) -> dict:
    """Evaluates `model` (default: the embedded tiny model) on `data`; returns the results as a dict.

    `tasks`: any of `TASKS`; default: zero-shot and linear probe when the data has labels, retrieval when it has
    captions. `train`: labelled data for the linear probe (default: a stratified split of `data`).
    """
    from ..tiny_model import DIGIT_TEMPLATE

    if process_position()[1] > 1:
        raise ValueError("dualclip eval runs in one process; start it without accelerate launch / torchrun")
    options = dict(path_column=path_column, caption_column=caption_column, label_column=label_column)
    source = open_source(data, DEFAULT_SHARD_SIZE, split=split, **options)
    labelled, captioned = source.has_images and source.classes is not None, source.has_images and source.has_captions
    if tasks is None:
        tasks = [task for task, ok in zip(TASKS, (labelled, captioned, labelled)) if ok]
        if not tasks:
            raise ValueError(f"{data} has neither labelled images (for zero-shot and linear probe) nor image-caption "
                             "pairs (for retrieval)")
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}: choose from {', '.join(TASKS)}")
    if not source.has_images:
        raise ValueError(f"{data} has no images to evaluate on")
    if ("zeroshot" in tasks or "linear-probe" in tasks) and not labelled:
        raise ValueError(f"{data} has no labels: zero-shot and linear probe need class subfolders or a label column")
    if "retrieval" in tasks and not captioned:
        raise ValueError(f"{data} has no captions: retrieval needs image-caption pairs")
    job_model = load_job_model(model, device, dtype)
    collected = _collect(job_model, source, True, "retrieval" in tasks, batch_size, workers, progress)
    results = {"model": job_model.identity["name"], "data": source.location, "images": len(collected["rows"]),
               "failures": collected["failures"]}
    if "zeroshot" in tasks:
        names = list(class_names) if class_names else list(source.classes)
        if len(names) != len(source.classes):
            raise ValueError(f"{len(names)} class names given for {len(source.classes)} classes ({source.classes})")
        if not templates:
            templates = [DIGIT_TEMPLATE] if job_model.is_tiny else ["a photo of a {}."]
        image, labels = _labelled(collected, "zero-shot classification")
        results["zeroshot"] = {**zero_shot_scores(image, class_embeddings(job_model, names, templates), labels),
                               "classes": len(names), "templates": list(templates)}
    if "retrieval" in tasks:
        rows = collected["rows"]
        results["retrieval"] = retrieval_recall(collected["image"], collected["text"], [r["path"] for r in rows],
                                                [r["caption"] for r in rows])
    if "linear-probe" in tasks:
        x, y = _labelled(collected, "the linear probe")
        if train is not None or train_split is not None:
            train_source = open_source(train if train is not None else data, DEFAULT_SHARD_SIZE,
                                       split=train_split, **options)
            if train_source.classes != source.classes:
                raise ValueError(f"the training data's classes {train_source.classes} differ from {source.classes}")
            train_x, train_y = _labelled(_collect(job_model, train_source, True, False, batch_size, workers,
                                                  progress), "the linear probe")
            test_x, test_y = x, y
        else:
            from sklearn.model_selection import train_test_split

            train_x, test_x, train_y, test_y = train_test_split(x, y, test_size=probe_test_fraction,
                                                                random_state=seed, stratify=y)
        results["linear_probe"] = linear_probe(train_x, train_y, test_x, test_y, probe_c, seed)
    return results
