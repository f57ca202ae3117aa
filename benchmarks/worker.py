"""Run each contender in its own worker process, driven by the parent over pipes.

Why: PyTorch (OpenMP threads) and TensorFlow (Eigen thread pools) in one process on a 2-core
machine interfere: threads of one framework still spin or hold cores when the other starts, and
a PyTorch step timed right after a TensorFlow step in the same process was measured up to 30x
slower than alone. With one process per contender, only the contender being timed is running;
the parent still alternates between them round by round, so all see the same machine load.

Protocol (one JSON object per line; replies on the worker's original stdout, everything the
frameworks print goes to its stderr, which the parent sends to a log file):

    {"cmd": "make", "key": K, "kind": "train"|"infer", "batch": B, "timesteps": T,
     "noisy": bool}                              -> {"supported": bool}
    {"cmd": "run", "key": K, "n": N}             -> {"times": [seconds, ...]}  (timed inside)
    {"cmd": "release"}                           -> {"ok": true}  (drop callables, free state)
    {"cmd": "quit"}                              -> (exits)

The first reply after start is {"ready": true} or {"unavailable": reason} (then it exits).
Every failure replies {"error": traceback}.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from benchmarks.contenders import (
    Contender,
    ContenderUnavailableError,
    Options,
    create,
    get_spec,
)

ROOT = Path(__file__).resolve().parent.parent


class WorkerError(RuntimeError):
    """The worker process failed; the message carries its traceback or log tail."""


def serve(name: str, options: Options, requests: IO[str], replies: IO[str]) -> None:
    """Worker loop: create contender `name`, then answer requests until "quit" or EOF.

    Args:
        name: registry name of the contender.
        options: shared options.
        requests: stream of JSON requests.
        replies: stream for JSON replies.
    """

    def reply(obj: dict) -> None:
        replies.write(json.dumps(obj) + "\n")
        replies.flush()

    # The factories set their framework's threads before it runs anything.
    try:
        contender = create(name, options)
    except ContenderUnavailableError as err:
        reply({"unavailable": str(err)})
        return
    except Exception:
        reply({"error": traceback.format_exc()})
        return
    reply({"ready": True})
    fns: dict[str, Callable[[], object]] = {}
    for line in requests:
        req = json.loads(line)
        try:
            cmd = req["cmd"]
            if cmd == "quit":
                return
            if cmd == "make":
                if req["kind"] == "train":
                    fn = contender.make_train_step(req["batch"], req["timesteps"], req["noisy"])
                else:
                    fn = contender.make_inference(req["batch"], req["timesteps"])
                if fn is not None:
                    fns[req["key"]] = fn
                reply({"supported": fn is not None})
            elif cmd == "run":
                fn = fns[req["key"]]
                times = []
                for _ in range(req["n"]):
                    start = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - start)
                reply({"times": times})
            elif cmd == "release":
                fns.clear()
                contender.release()
                reply({"ok": True})
            else:
                reply({"error": f"unknown command {cmd!r}"})
        except Exception:
            reply({"error": traceback.format_exc()})


class RemoteContender(Contender):
    """A contender living in a worker subprocess; its callables return worker-measured seconds.

    Args:
        name: registry name.
        options: shared options (seed, savedmodel, onnx; the config is the default ECG one).
        log_dir: folder for the worker's stderr log.

    Raises:
        ContenderUnavailableError: the worker reports the contender cannot run here.
        WorkerError: the worker crashed or failed to start.
    """

    self_timed = True

    def __init__(self, name: str, options: Options, log_dir: str | None = None) -> None:
        spec = get_spec(name)
        super().__init__(name, spec.side, options)
        log_dir = log_dir or tempfile.gettempdir()
        self.log_path = Path(log_dir) / f"benchmarks-worker-{name}-{os.getpid()}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - lives as long as the worker
        payload = json.dumps(
            {"seed": options.seed, "savedmodel": options.savedmodel, "onnx": options.onnx}
        )
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker", name, payload],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            text=True, cwd=ROOT, env=env, bufsize=1,
        )
        self._counter = 0
        self._ready: dict | None = None

    def wait_ready(self) -> None:
        """Block until the worker has created its contender (workers start in parallel)."""
        if self._ready is None:
            self._ready = self._read()
        if "unavailable" in self._ready:
            self.close()
            raise ContenderUnavailableError(self._ready["unavailable"])

    def _read(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait(timeout=30)
            raise WorkerError(
                f"worker {self.name} exited with code {self._proc.returncode}; "
                f"log tail: {self._log_tail()}"
            )
        out = json.loads(line)
        if "error" in out:
            raise WorkerError(f"worker {self.name} failed:\n{out['error']}")
        return out

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text().strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def request(self, **req: Any) -> dict:
        """Send one request and return the reply."""
        self.wait_ready()
        self._proc.stdin.write(json.dumps(req) + "\n")
        self._proc.stdin.flush()
        return self._read()

    def _make(self, calls: int = 1, **req: Any) -> Callable[[], float] | None:
        """Make a callable in the worker; each call of the returned function runs it `calls`
        times back to back there and returns the median seconds of one run."""
        self._counter += 1
        key = f"{req['kind']}-{self._counter}"
        if not self.request(cmd="make", key=key, **req)["supported"]:
            return None

        def run() -> float:
            return statistics.median(self.request(cmd="run", key=key, n=calls)["times"])

        return run

    def make_train_step(
        self, batch: int, timesteps: int, noisy: bool = True
    ) -> Callable[[], float] | None:
        return self._make(kind="train", batch=batch, timesteps=timesteps, noisy=noisy)

    def make_inference_burst(
        self, batch: int, timesteps: int, calls: int
    ) -> Callable[[], float] | None:
        return self._make(kind="infer", batch=batch, timesteps=timesteps, noisy=False, calls=calls)

    def make_inference(self, batch: int, timesteps: int) -> Callable[[], float] | None:
        return self._make(kind="infer", batch=batch, timesteps=timesteps, noisy=False)

    def release(self) -> None:
        if self._proc.poll() is None:
            self.request(cmd="release")

    def close(self) -> None:
        """Stop the worker (politely, then by its pid) and close its log."""
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self._proc.stdin.flush()
                self._proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        if not self._log.closed:
            self._log.close()
        if self._proc.returncode == 0:  # keep the log only when something went wrong
            self.log_path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Worker entry point: `python -m benchmarks.worker NAME '{"seed": 0, ...}'`."""
    argv = sys.argv[1:] if argv is None else argv
    name, payload = argv[0], json.loads(argv[1])
    options = dataclasses.replace(Options(), **payload)
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything the frameworks print goes to stderr, not into the replies
    serve(name, options, sys.stdin, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
