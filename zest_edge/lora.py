"""LoRA through PEFT on the chosen layers (LoRA + ZEST), with backprop truncated at the earliest adapted layer.

    sm = lora_sparsify(model, layers, LoraSpec(r=8))    # layers None: every candidate layer (LoRA-all)
    save_adapter(sm, "run/adapter")                      # PEFT's save_pretrained: adapter_config.json + weights
    merged = merge_adapter(model, "run/adapter")         # PeftModel.from_pretrained + merge_and_unload

`lora_sparsify` splits the forward like `sparsify` does for the same layers (the stages before the one holding the
earliest adapted layer run under no_grad and can be cached), then wraps exactly those modules — full module names
in `target_modules`, so the selection is global, not per-block — with `peft.get_peft_model`. What trains: every
lora_A / lora_B and the head (a PEFT `modules_to_save` copy, saved with the adapter); every base weight is frozen.
"""
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from torch import nn

from .errors import ZestError, first_line
from .layers import layer_map
from .models import get_spec
from .sparse import SparseModel, sparsify

ADAPTER_DIR = "adapter"


@dataclass(frozen=True)
class LoraSpec:
    r: int = 8
    alpha: float | None = None          # None: 2·r
    dropout: float = 0.0

    def check(self) -> "LoraSpec":
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ZestError(f"--lora must be a positive integer rank, got {self.r}")
        if self.alpha is not None and not self.alpha > 0:
            raise ZestError(f"--lora-alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ZestError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        return self

    @property
    def scale_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else 2 * self.r)

    def to_dict(self) -> dict:
        return {**asdict(self), "alpha": self.scale_alpha}


def config_dict(targets: list[str], head: str, r: int = 8, alpha: float = 16, dropout: float = 0.0) -> dict:
    """Keyword arguments of `peft.LoraConfig` adapting exactly `targets` (full module names) and training `head`."""
    return {"peft_type": "LORA", "task_type": None, "r": r, "lora_alpha": alpha, "lora_dropout": dropout,
            "bias": "none", "target_modules": list(targets), "modules_to_save": [head]}


def _peft():
    try:
        import peft
    except ImportError as e:
        raise ZestError(f"LoRA needs peft ({first_line(e)}): pip install -r requirements.txt") from None
    return peft


def lora_sparsify(model: nn.Module, layers: list[str] | None, spec: LoraSpec, bn: str = "frozen") -> SparseModel:
    """LoRA on `layers` (None: all candidate layers) + the head, the forward split at the earliest one."""
    spec.check()
    peft = _peft()
    names = [l.name for l in layer_map(model)] if layers is None else list(layers)
    if not names:
        raise ZestError("LoRA needs at least one layer to adapt (the head alone trains without --lora)")
    sm = sparsify(model, names, bn=bn)
    if sm.trained_bn:
        raise ZestError("--bn train-selected does not combine with --lora (LoRA trains only adapters and the head)")
    head = get_spec(model).head
    config = peft.LoraConfig(**config_dict([l.name for l in sm.selected], head, spec.r, spec.scale_alpha, spec.dropout))
    wrapped = peft.get_peft_model(model, config)
    adapted = sorted(n for n, m in model.named_modules() if hasattr(m, "lora_A") and not n.endswith(".base_layer"))
    if adapted != sorted(l.name for l in sm.selected):
        raise ZestError(f"PEFT adapted {len(adapted)} modules, expected the {len(sm.selected)} chosen layers")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out = replace(sm, trainable=trainable, lora=spec, peft=wrapped)
    out.train_mode()
    return out


def save_adapter(sm: SparseModel, out_dir) -> Path:
    """PEFT's save_pretrained of the adapter (LoRA factors + head) into `out_dir`, written atomically."""
    from .io import atomic_dir
    if sm.peft is None:
        raise ZestError("this model carries no LoRA adapter")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, force=True) as tmp:
        sm.peft.save_pretrained(str(tmp))
    return out_dir


def merge_adapter(model: nn.Module, adapter_dir) -> nn.Module:
    """`model` with the adapter in `adapter_dir` loaded by PEFT and merged into its weights (head included)."""
    peft = _peft()
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ZestError(f"no PEFT adapter in {adapter_dir} (expected adapter_config.json)")
    try:
        wrapped = peft.PeftModel.from_pretrained(model, str(adapter_dir))
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        raise ZestError(f"cannot load the adapter in {adapter_dir}: {first_line(e)}") from None
    return wrapped.merge_and_unload()
