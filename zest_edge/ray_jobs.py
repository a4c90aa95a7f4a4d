"""Run independent jobs on Ray (an existing cluster, or a local one): `map_unordered(fn, args, emit)`.

Knows nothing of what the jobs do, so nothing here imports back into the code that uses it.
"""
from .errors import ZestError, first_line


def require_ray():
    """The ray module, or a one-line error saying how to install it (callers check before writing anything)."""
    try:
        import ray
    except ImportError:
        raise ZestError("--backend ray needs Ray: pip install 'zest-edge[ray]'") from None
    return ray


def map_unordered(fn, arg_tuples: list[tuple], emit, *, address: str | None = None, desc: str = "jobs",
                  progress: bool = True) -> None:
    """Call fn(*args) for each tuple as one Ray task (1 CPU each); emit(result) as each finishes."""
    ray = require_ray()
    from tqdm import tqdm
    if not arg_tuples:
        return
    try:
        ray.init(address=address, num_cpus=None if address else 2, include_dashboard=False,
                 ignore_reinit_error=True, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ZestError(f"cannot reach Ray at {address or 'a new local instance'}: {first_line(e)}") from None
    remote = ray.remote(num_cpus=1)(fn)
    pending = [remote.remote(*args) for args in arg_tuples]
    with tqdm(total=len(pending), desc=desc, unit="job", disable=not progress) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            emit(ray.get(ready[0]))
            bar.update(1)
