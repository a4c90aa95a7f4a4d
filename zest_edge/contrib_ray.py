"""Ray backend of the contribution sweep: one Ray task per layer on an existing cluster (or a local one).

Each worker rebuilds the task from its load arguments and trains its layer alone; the driver appends each
finished row to the same store as the local backend, so shards, local and Ray runs merge alike.
"""
from dataclasses import asdict

from .errors import ZestError
from .io import append_jsonl


def _sweep_one(load_args: dict, schedule: dict, layer: str) -> dict:
    import torch
    from .contrib import sweep_layers
    from .finetune import Schedule
    from .task import load_task
    torch.set_num_threads(1)
    rows = []
    sweep_layers(load_task(**load_args), Schedule(**schedule), [layer], rows.append, progress=False)
    return rows[0]


def run_ray(task, schedule, todo: list[str], path, chash: str, *, address: str | None, progress: bool = True) -> None:
    try:
        import ray
    except ImportError:
        raise ZestError("--backend ray needs Ray: pip install 'zest-edge[ray]'") from None
    from tqdm import tqdm
    try:
        ray.init(address=address, num_cpus=None if address else 2, include_dashboard=False,
                 ignore_reinit_error=True, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ZestError(f"cannot reach Ray at {address or 'a new local instance'}: {str(e).splitlines()[0]}") from None
    remote = ray.remote(num_cpus=1)(_sweep_one)
    pending = [remote.remote(task.load_args, asdict(schedule), layer) for layer in todo]
    with tqdm(total=len(todo), desc="layers (ray)", unit="layer", disable=not progress) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            row = ray.get(ready[0])
            append_jsonl(path, {**row, "config_hash": chash})
            bar.update(1)
            bar.set_postfix(layer=row["layer"][-24:], acc=f"{row['acc']:.3f}")
