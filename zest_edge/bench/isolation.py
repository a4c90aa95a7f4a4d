"""Fresh worker processes for measurements, one per configuration, driven over JSON lines.

`Worker(cfg)` starts `python -m zest_edge.bench.isolation`, which builds the configuration's step
(`zest_edge.bench.step`: its memory phase runs there, in a process that has allocated nothing else) and then waits;
`worker.step()` asks for one timed step. Several workers stay alive at once, so a profile can time their steps in
turns (round-robin) and every configuration sees the same machine load. A crash, an exception or a timeout in a
worker comes back as {"error": ...}; the worker is then gone and the others go on.
"""
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

TAG = "ZEST_WORKER "


class Worker:
    def __init__(self, cfg: dict, timeout: float = 900):
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "zest_edge.bench.isolation"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, start_new_session=True)
        self.buffer = b""
        self.ready = self.call(cfg, timeout)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and "error" not in self.ready

    def call(self, message, timeout: float) -> dict:
        """Send one JSON line, wait for the tagged answer (or an error record on death/timeout)."""
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return self.death()
        deadline = time.monotonic() + timeout
        while True:
            line, _, rest = self.buffer.partition(b"\n")
            if _:
                self.buffer = rest
                text = line.decode(errors="replace")
                if text.startswith(TAG):
                    answer = json.loads(text[len(TAG):])
                    if "error" in answer:
                        self.close()
                    return answer
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                return {"error": f"timed out after {timeout:.0f} s"}
            if select.select([self.proc.stdout], [], [], left)[0]:
                chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    return self.death()
                self.buffer += chunk

    def step(self, timeout: float = 900) -> dict:
        return self.call("step", timeout)

    def death(self) -> dict:
        """The error record of a worker that is gone: its exit code or signal and the last line it wrote."""
        code = self.proc.wait()
        self.log.seek(0)
        lines = [ln for ln in self.log.read().splitlines() if ln.strip()]
        why = f"killed by signal {-code}" + (" (out of memory?)" if code == -signal.SIGKILL else "") if code < 0 \
            else f"exited {code}"
        return {"error": f"worker {why}: {lines[-1][:300] if lines else 'no output'}"}

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'"quit"\n')
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if not self.log.closed:
            self.log.close()


def error_record(e: BaseException) -> dict:
    if isinstance(e, MemoryError):
        return {"error": "out of memory"}
    line = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    return {"error": f"{type(e).__name__}: {line[:300]}"}


def serve() -> None:
    """The worker's side: the first line is the configuration, then "step" lines until "quit" or EOF."""
    import warnings
    warnings.simplefilter("ignore")
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)                                   # anything a library prints goes to stderr, not the protocol
    answer = lambda record: print(TAG + json.dumps(record), file=out, flush=True)  # noqa: E731
    lines = iter(sys.stdin)
    try:
        from .step import STEPS
        cfg = json.loads(next(lines))
        stepper = STEPS[cfg["backend"]](cfg)
        answer({"memory": stepper.memory, "info": stepper.info})
    except Exception as e:  # a configuration that cannot be built is reported beside the others
        answer(error_record(e))
        return
    for line in lines:
        if json.loads(line) != "step":
            return
        try:
            answer(stepper.step())
        except Exception as e:
            answer(error_record(e))
            return


if __name__ == "__main__":
    serve()
