"""Profiling one training step: full fine-tuning vs ZEST@k vs last@k vs head-only, per backend.

`profile(model_name, out=..., ...)` writes
    out/profile.json   format zest-edge/profile, version 2: one record per (backend, configuration) + machine info
    out/profile.md     latency and memory per configuration with ratios to full fine-tuning (like ZEST's Table 4)
    out/profile.png    latency and memory per configuration, one bar per backend

Configurations (every one trained with the same optimizer, default AdamW lr 1e-3; `sgd` is plain SGD without
momentum in every backend, since ORT's on-device SGD has none): `full`; `zest@k`, the top k of a ranking (a file,
or ranked now on --data) or the first k of an explicit --layers order; `last@k`; `lora-all` (rank-r LoRA through PEFT on every layer + the
head); `lora+zest@k` (LoRA on zest@k's layers only, backprop cut at the earliest); `head-only`. LoRA runs on torch only.

Backends: `torch` (the sparse engine; the frozen prefix runs every step under no_grad); `ort` (the exported split
artifacts: prefix.onnx inference, then the suffix's training step — a device's first epoch); `ort-cached` (the
suffix's training step on the prefix output computed once — a device's later epochs; listed for configurations
that have a prefix); `executorch` and `executorch-cached`, the same with the ExecuTorch programs (SGD only; no
full fine-tuning, so its rows have no ratio to full). What a step is and how its bound is measured: zest_edge.bench.step.

How numbers survive a noisy machine: every (backend, configuration) lives in its own worker process
(zest_edge.bench.isolation), started one after another, each measuring its own peak memory while the others sit
idle; then `steps` rounds time one step of every worker in turn, the order rotating each round, so load that comes
and goes lands on all configurations alike. Each ratio to full fine-tuning comes with a 95% bootstrap interval over
rounds (paired: a resampled round keeps all its configurations' steps).
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ZestError
from .isolation import Worker
from .machine import machine_info

FORMAT = "zest-edge/profile"
VERSION = 2
CONFIG_KINDS = ("full", "zest", "last", "head", "lora", "lora-zest")
DEFAULT_CONFIGS = ("full", "zest", "last", "head")
BACKENDS = ("torch", "ort", "executorch")
OPTIMIZERS = ("adamw", "sgd")
BOOTSTRAP = 2000


def plan_configs(model, ks: list[int], kinds, *, order: list[str] | None, ranking: dict | None, label: str,
                 lora_r: int = 8) -> list[dict]:
    """[{name, kind, k, layers, lora}] in table order: full, zest@k..., last@k..., lora-all, lora+zest@k...,
    head-only (layers in execution order; lora: the LoRA rank or None)."""
    from ..selection import select_layers
    configs = []
    if "full" in kinds:
        configs.append({"name": "full", "kind": "full", "k": None, "layers": None, "lora": None})
    for kind in ("zest", "last", "lora", "lora-zest"):
        if kind == "lora" and kind in kinds:
            configs.append({"name": "lora-all", "kind": "lora", "k": None, "layers": None, "lora": lora_r})
        for k in ks if kind in kinds and kind != "lora" else []:
            if kind == "last":
                chosen = select_layers(model, "last", k=k)
            elif ranking is not None:
                chosen = select_layers(model, "ranking", ranking=ranking, k=k)
            else:
                if k > len(order):
                    raise ZestError(f"--top-k {k} needs {k} layers, but --layers gives {len(order)}")
                chosen = select_layers(model, "layers", names=order[:k])
            name = {"zest": label, "last": "last", "lora-zest": f"lora+{label}"}[kind]
            configs.append({"name": f"{name}@{k}", "kind": kind, "k": k, "layers": chosen.layers,
                            "lora": lora_r if kind == "lora-zest" else None})
    if "head" in kinds:
        configs.append({"name": "head-only", "kind": "head", "k": 0, "layers": [], "lora": None})
    return configs


def layer_order(model, model_name: str, *, layers=None, ranking=None, data=None, task_args=None, top_k: int = 1,
                out: Path | None = None) -> tuple[list[str] | None, dict | None, dict]:
    """Where zest@k comes from: (explicit order, ranking record, provenance)."""
    from ..selection import load_ranking, select_layers
    given = [n for n, v in (("--layers", layers), ("--ranking", ranking), ("--data", data)) if v]
    if len(given) > 1:
        raise ZestError(f"choose one of --layers, --ranking, --data (got {', '.join(given)})")
    if layers:
        names = [n.strip() for n in layers.split(",") if n.strip()] if isinstance(layers, str) else list(layers)
        select_layers(model, "layers", names=names)          # unknown or repeated names: one-line errors
        return names, None, {"source": "layers"}
    if ranking:
        return None, load_ranking(ranking, model_name), {"source": "ranking", "ranking": str(ranking)}
    if data:
        from ..io import write_json
        from ..ranking import rank_task
        from ..task import load_task
        record = rank_task(load_task(model_name, data, **(task_args or {})), top_k=top_k)
        if out is not None:
            write_json(Path(out) / "ranking.json", record)
        return None, record, {"source": "rank_task", "data": data}
    return [], None, {"source": None}


def export_for(backend: str, model, layers, path: Path, batch_size: int, optimizer: str, lr: float) -> dict | None:
    """ORT training artifacts or ExecuTorch programs (split at the prefix) into `path`; None on success, else an
    {"error": ...} record."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            if backend == "executorch":
                from ..export.executorch import export_executorch
                export_executorch(model, layers, path, batch_size=batch_size, optimizer=optimizer, lr=lr)
            else:
                from ..export.artifacts import export_artifacts
                export_artifacts(model, layers, path, batch_size=batch_size, optimizer=optimizer, lr=lr)
    except ZestError as e:
        return {"error": f"{backend} export: {e}"}
    return None


def measurements(plan: list[dict], backends: list[str]) -> list[dict]:
    """(backend, configuration) pairs in table order; exported configurations (ORT, ExecuTorch) with a prefix also get
    "<backend>-cached"."""
    jobs = []
    for backend in backends:
        exported = backend in ("ort", "executorch")
        for config in plan:
            jobs.append({**config, "backend": backend, "mode": "split" if exported else None})
            if exported and config["kind"] != "full":
                jobs.append({**config, "backend": f"{backend}-cached", "mode": "cached"})
    return jobs


def bootstrap_ratio(full: np.ndarray, other: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% interval of median(full) / median(other) over resampled rounds (paired by round)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(full), size=(BOOTSTRAP, len(full)))
    ratios = np.median(full[idx], axis=1) / np.median(other[idx], axis=1)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(lo), float(hi)


def summarize(job: dict, ready: dict, steps: list[dict]) -> dict:
    record = {"backend": job["backend"], "config": job["name"], "kind": job["kind"], "k": job["k"],
              "layers": job["layers"], "lora": job["lora"]}
    if "error" in ready:
        return {**record, "error": ready["error"]}
    if not steps or "error" in steps[-1]:
        return {**record, **ready["memory"], **ready["info"],
                "error": steps[-1]["error"] if steps else "no timed step"}
    total = np.array([round(s["step_ms"], 3) for s in steps])
    bound = np.array([s["bound_ms"] for s in steps])
    q25, q50, q75 = np.percentile(total, [25, 50, 75])
    parts = {f"{k}_median": float(np.median([s[k] for s in steps])) for k in steps[0] if k not in ("step_ms", "bound_ms")}
    return {**record, **ready["memory"], **ready["info"], "step_ms_median": float(q50), "step_ms_iqr": float(q75 - q25),
            "step_ms": [float(t) for t in total], "bound_ms": float(np.median(bound)),
            "efficiency": float(np.median(bound / total)), **parts}


def add_ratios(records: list[dict]) -> None:
    """speedup_vs_full (with its 95% interval) and mem_ratio_vs_full against the same runtime's full fine-tuning
    (ort-cached compares with ort's full step, which has no prefix to cache)."""
    full = {r["backend"]: r for r in records if r["kind"] == "full" and "error" not in r}
    full["ort-cached"], full["executorch-cached"] = full.get("ort"), full.get("executorch")
    for r in records:
        f = full.get(r["backend"])
        ok = f is not None and "error" not in r
        r["speedup_vs_full"] = f["step_ms_median"] / r["step_ms_median"] if ok else None
        r["speedup_ci95"] = (list(bootstrap_ratio(np.array(f["step_ms"]), np.array(r["step_ms"])))
                             if ok and len(r["step_ms"]) == len(f["step_ms"]) and r is not f else None)
        r["mem_ratio_vs_full"] = (r["peak_mem_mb"] / f["peak_mem_mb"]
                                  if ok and r.get("peak_mem_mb") is not None and f.get("peak_mem_mb") else None)


def check_args(backends, kinds, optimizer, device, steps, warmup, batch_size, ks, resolution) -> None:
    import torch
    for b in backends:
        if b not in BACKENDS:
            raise ZestError(f"unknown backend {b!r}; choose from: {', '.join(BACKENDS)}")
    for c in kinds:
        if c not in CONFIG_KINDS:
            raise ZestError(f"unknown configuration {c!r}; choose from: {', '.join(CONFIG_KINDS)}")
    if optimizer not in OPTIMIZERS:
        raise ZestError(f"unknown optimizer {optimizer!r}; choose from: {', '.join(OPTIMIZERS)}")
    if device not in ("cpu", "cuda"):
        raise ZestError(f"--device must be cpu or cuda, not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ZestError("--device cuda: torch sees no CUDA device here")
    if device == "cuda" and "ort" in backends:
        raise ZestError("--backends ort runs on the CPU only: ONNX Runtime's training build here has no CUDA provider")
    if device == "cuda" and "executorch" in backends:
        raise ZestError("--backends executorch runs on the CPU only (ExecuTorch's portable CPU kernels)")
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise ZestError("--steps must be >= 1, --warmup >= 0 and --batch-size >= 1")
    if not ks or ks[0] < 1:
        raise ZestError("--top-k needs positive integers, e.g. 3,5,10")
    if resolution is not None and not 16 <= resolution <= 1024:
        raise ZestError(f"--resolution must be between 16 and 1024, got {resolution}")
    if {"lora", "lora-zest"} & set(kinds) and set(backends) - {"torch"}:
        raise ZestError("LoRA configurations run on the torch backend only (--backends torch)")


def profile(model_name: str, *, out, batch_size: int = 32, resolution: int | None = None, top_k=(5,),
            layers=None, ranking=None, data=None, task_args: dict | None = None, backends=("torch",),
            device: str = "cpu", steps: int = 10, warmup: int = 3, optimizer: str = "adamw", lr: float = 1e-3,
            num_classes: int = 10, weights: str | None = None, threads: int | None = None, configs=DEFAULT_CONFIGS,
            label: str | None = None, timeout: float = 900, progress: bool = True, max_length: int | None = None,
            lora_r: int = 8) -> dict:
    """Measure one training step per (backend, configuration), interleaved; write profile.json/.md/.png."""
    from tqdm import tqdm
    from ..io import write_json, write_text
    from ..models import build_model, with_preprocess
    from .profile_report import plot_profile, profile_table
    ks = sorted({int(k) for k in top_k})
    backends, kinds = list(dict.fromkeys(backends)), list(dict.fromkeys(configs))
    check_args(backends, kinds, optimizer, device, steps, warmup, batch_size, ks, resolution)
    out = Path(out)
    model = with_preprocess(build_model(model_name, num_classes=num_classes, weights=weights), resolution=resolution,
                            max_length=max_length)
    order, record, source = layer_order(model, model_name, layers=layers, ranking=ranking, data=data,
                                        task_args=task_args, top_k=max(ks), out=out)
    if {"zest", "lora-zest"} & set(kinds) and not order and record is None:
        raise ZestError("zest@k needs a layer order: give --layers, --ranking or --data (or leave zest out of --configs)")
    plan = plan_configs(model, ks, kinds, order=order, ranking=record,
                        label=label or ("zest" if record is not None else "sel"), lora_r=lora_r)
    out.mkdir(parents=True, exist_ok=True)
    base = {"model": model_name, "num_classes": num_classes, "weights": weights, "batch_size": batch_size,
            "resolution": resolution, "max_length": max_length, "device": device, "warmup": warmup,
            "optimizer": optimizer, "lr": lr, "threads": threads, "seed": 0}
    jobs = measurements(plan, backends)
    with tempfile.TemporaryDirectory(prefix="zest-profile-") as tmp:
        workers, readies = [], []
        for job in tqdm(jobs, desc="building", unit="config", disable=not progress):
            cfg = {**base, "backend": job["backend"].split("-")[0], "mode": job["mode"], "layers": job["layers"],
                   "lora": job["lora"]}
            runtime = cfg["backend"]
            failed, artifacts = None, Path(tmp) / f"{runtime}-{job['name']}"       # shared by X and X-cached
            if job["mode"] == "split":
                failed = export_for(runtime, model, job["layers"], artifacts, batch_size, optimizer, lr)
            elif job["mode"] == "cached" and not (artifacts / "manifest.json").exists():
                failed = {"error": f"{runtime} export failed (see the {runtime} row)"}
            if job["mode"]:
                cfg["artifacts"] = str(artifacts)
            worker = None if failed else Worker(cfg, timeout)
            workers.append(worker)
            readies.append(failed or worker.ready)
        timings = [[] for _ in jobs]
        for r in tqdm(range(steps), desc="timing rounds", unit="round", disable=not progress):
            for j in [(r + i) % len(jobs) for i in range(len(jobs))]:
                if workers[j] is not None and workers[j].alive:
                    timings[j].append(workers[j].step(timeout))
                elif workers[j] is not None and "error" not in readies[j] and \
                        not (timings[j] and "error" in timings[j][-1]):
                    timings[j].append(workers[j].death())      # died between calls: say why in its row
        for w in workers:
            if w is not None:
                w.close()
    records = [summarize(job, ready, steps_) for job, ready, steps_ in zip(jobs, readies, timings)]
    add_ratios(records)
    machine = machine_info(device)
    machine["memory_method"] = "; ".join(sorted({r["memory_method"] for r in records if r.get("memory_method")})) or None
    machine["threads"] = next((r["threads"] for r in records if r.get("threads")), None)
    result = {"format": FORMAT, "version": VERSION, "model": model_name, "batch_size": batch_size,
              "resolution": resolution or model.zest_spec.preprocess.resolution, "num_classes": num_classes,
              **({"max_length": model.zest_spec.preprocess.max_length} if model.zest_spec.preprocess.kind == "text" else {}),
              "weights": model.zest_spec.weights, "optimizer": optimizer, "lr": lr, "steps": steps, "warmup": warmup,
              "device": device, "backends": list(dict.fromkeys(j["backend"] for j in jobs)),
              "selection": {**source, "order": [c["layers"] for c in plan if c["kind"] == "zest"]},
              "timing": "interleaved rounds, rotating order; ratios with 95% bootstrap intervals over rounds",
              "machine": machine, "records": records}
    write_json(out / "profile.json", result)
    write_text(out / "profile.md", profile_table(result))
    plot_profile(result, out / "profile.png")
    return result
