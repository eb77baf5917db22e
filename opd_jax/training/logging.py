"""Where metrics go: JSONL always, TensorBoard event files, Weights & Biases when asked, and a
one-line progress display (step, loss, tokens/s, ETA)."""

import json
import math
import os
import sys
import time


def combine_updates(metrics: list[dict]) -> dict:
    """One batch's metrics from its optimizer steps' (``loop.minibatches`` x ``loop.epochs``): the
    mean of each, but the tokens trained on (``loss/tokens``: their sum) and the longest
    completion (``loss/max_len``: the largest)."""
    if len(metrics) == 1:
        return metrics[0]
    out = {k: sum(float(m[k]) for m in metrics) / len(metrics) for k in metrics[0]}
    out["loss/tokens"] = sum(float(m["loss/tokens"]) for m in metrics)
    out["loss/max_len"] = max(float(m["loss/max_len"]) for m in metrics)
    return out


def _drop_partial_record(path: str) -> None:
    """Cut a last line left unfinished by a killed run, so that appended records stay JSONL."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        end = pos = f.seek(0, os.SEEK_END)
        while pos > 0:
            size = min(1 << 16, pos)
            pos -= size
            f.seek(pos)
            chunk = f.read(size)
            if pos + size == end and chunk.endswith(b"\n"):
                return
            if (i := chunk.rfind(b"\n")) >= 0:
                f.truncate(pos + i + 1)
                return
        f.truncate(0)


class MetricsWriter:
    """Writes one record per logged step to ``metrics.jsonl`` (and TensorBoard / W&B)."""

    def __init__(self, workdir: str, *, tensorboard: bool = True, wandb: bool = False,
                 config: dict | None = None, enabled: bool = True):
        self.enabled = enabled  # only process 0 writes in a multi-host run
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = self._wandb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        _drop_partial_record(self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        if wandb:
            try:
                import wandb as wb
            except ImportError:
                print("run.wandb=true but wandb is not installed (pip install wandb); skipping it",
                      file=sys.stderr)
            else:
                self._wandb = wb.init(dir=workdir, config=config or {})

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": step, **clean}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), step)
        if self._wandb is not None:
            self._wandb.log(dict(metrics), step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


class Progress:
    """``step 12/100 | loss 0.4312 | 1,234 tok/s | ETA 3m05s`` on one refreshed line.

    On a terminal the line is redrawn every step; into a file or pipe (a log, CI) a line is
    written at most every ``every_s`` seconds, and for the last step.
    """

    def __init__(self, total: int, start: int, enabled: bool = True, stream=None,
                 every_s: float = 10.0):
        stream = sys.stderr if stream is None else stream  # the current one, not import time's
        self.total, self.start, self.enabled, self.stream = total, start, enabled, stream
        self.t0 = self.last = time.perf_counter()
        self.every_s = every_s
        self.tty = enabled and stream.isatty()

    def update(self, step: int, loss: float, tokens_per_s: float) -> str:
        done = step - self.start
        now = time.perf_counter()
        elapsed = now - self.t0
        eta = elapsed / max(done, 1) * (self.total - step)
        line = (f"step {step}/{self.total} | loss {loss:.4f} | {tokens_per_s:,.0f} tok/s | "
                f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")
        last = step >= self.total
        if self.enabled and self.tty:
            self.stream.write("\r" + line + ("\n" if last else ""))
            self.stream.flush()
        elif self.enabled and (last or now - self.last >= self.every_s):
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last = now
        return line
