"""The run directory and what a run reports: metrics, progress, summary and plot.

Every run writes, from the main process (rank 0) only:

    <run_dir>/config.yaml    the resolved config, as given by the caller
    <run_dir>/metrics.jsonl  one JSON object per logged step: {"step": 3, "reward/mean": ...}
    <run_dir>/tb/            TensorBoard scalars (when enabled)
    <run_dir>/summary.json   at the end, also when the run fails: steps, wall_s,
                             eval_before, eval_after, the final metrics
    <run_dir>/curves.png     reward mean and eval accuracy against step

>>> with RunLog("runs/demo", total_steps=2, recipe="grpo") as run:  # doctest: +SKIP
...     run.log(0, eval_metrics(groups_before))          # eval/accuracy, eval/pass@1, ...
...     run.log(1, {"reward/mean": 0.25, "loss": 0.1, "kl": 0.0})
...     run.log(2, {"reward/mean": 0.5, "loss": 0.08, **eval_metrics(groups_after)})

Give a step's training and eval metrics in one `log` call: that keeps one row per step
(calling twice for a step writes two rows, which `read_metrics` users must merge).
Metric values must be finite to be meaningful: NaN or inf is written as null, named in
the row's `_nonfinite` note and warned about once per key; the run goes on (stopping it
is the recipe's call). None means "not measured" and is written as null without a note.

Resuming (`resume_step=k`) keeps the rows with step <= k, drops the later ones (they
come from steps the checkpoint does not contain and will be redone), and appends.

Not protected against: two runs writing one directory at the same time (nothing locks
it), and rows lost by a kill between a step and its `log` call (the checkpoint then
holds a step the log lacks; the resumed run does not rewrite it).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

__all__ = [
    "RunLog",
    "Stopwatch",
    "default_run_dir",
    "flatten",
    "format_line",
    "make_figure",
    "read_metrics",
    "save_plot",
    "truncate_metrics",
]

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
PLOT = "curves.png"
CONFIG = "config.yaml"
TB_DIR = "tb"

Row = dict[str, Any]


def default_run_dir(recipe: str, root: str | Path = "runs", now: datetime | None = None) -> Path:
    """`<root>/<recipe>-<YYYYmmdd-HHMMSS>`."""
    return Path(root) / f"{recipe}-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings become `/`-joined keys: {"time": {"train_s": 1}} -> {"time/train_s": 1}."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"metric keys are strings, got {key!r}")
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = value
    return out


def _scalar(key: str, value: Any) -> Any:
    """A JSON scalar for `value`; tensors and numpy numbers of one element become floats."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    item = getattr(value, "item", None)  # torch / numpy scalars
    if callable(item):
        try:
            return item()
        except (ValueError, RuntimeError) as e:  # more than one element
            raise TypeError(f"metric {key!r} is not a scalar: {e}") from e
    raise TypeError(f"metric {key!r} is a {type(value).__name__}; log numbers, str or None")


def _clean(step: int, metrics: Mapping[str, Any]) -> tuple[Row, dict[str, str]]:
    """The row to write and the keys whose values were NaN/inf (as "nan", "inf", "-inf")."""
    row: Row = {"step": int(step)}
    nonfinite: dict[str, str] = {}
    for key, value in flatten(metrics).items():
        if key == "step" or key.startswith("_"):
            raise ValueError(f"metric key {key!r} is reserved")
        value = _scalar(key, value)
        if isinstance(value, float) and not math.isfinite(value):
            nonfinite[key] = str(value)
            value = None
        row[key] = value
    if nonfinite:
        row["_nonfinite"] = nonfinite
    return row, nonfinite


def read_metrics(path: str | Path) -> list[Row]:
    """The rows of a metrics.jsonl file ([] when it does not exist).

    A torn last line (the process was killed mid-write) is skipped; a bad line anywhere
    else raises ValueError with its line number.
    """
    p = Path(path)
    if not p.exists():
        return []
    lines = p.read_text().splitlines()
    rows: list[Row] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{p}:{i + 1}: not a JSON object ({e})") from e
    return rows


def truncate_metrics(path: str | Path, step: int) -> list[Row]:
    """Drops the rows with step > `step` (atomically) and returns the rows kept."""
    p = Path(path)
    kept = [r for r in read_metrics(p) if r["step"] <= step]
    if p.exists():
        tmp = p.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in kept))
        os.replace(tmp, p)
    return kept


def _fmt(value: Any) -> str:
    if value is None:
        return "null"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _figures(row: Mapping[str, Any]) -> list[str]:
    parts = []
    for key, label in (("reward/mean", "reward"), ("kl", "kl"), ("loss", "loss")):
        if key in row:
            parts.append(f"{label} {_fmt(row[key])}")
    if row.get("tokens_per_s") is not None:
        parts.append(f"{row['tokens_per_s']:.0f} tok/s")
    for key, value in row.items():
        if key == "eval/accuracy" or _is_pass_key(key):
            parts.append(f"{key} {_fmt(value)}")
    return parts


def _is_pass_key(key: str) -> bool:
    return key.startswith("eval/pass@") and "_" not in key


def format_line(step: int, total: int, row: Mapping[str, Any]) -> str:
    """One plain progress line: step, reward, KL, loss, throughput, and eval if present.

    >>> format_line(3, 10, {"reward/mean": 0.5, "kl": 0.0012, "tokens_per_s": 812.3})
    'step 3/10 | reward 0.5 | kl 0.0012 | 812 tok/s'
    """
    return " | ".join([f"step {step}/{total}", *_figures(row)])


class _Progress:
    """A rich progress bar on a terminal; plain lines (one per logged row) elsewhere."""

    def __init__(self, console: Console, total: int, start: int, bar: bool) -> None:
        self.console, self.total = console, total
        self._bar = None
        if bar and console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]step"),
                MofNCompleteColumn(),
                BarColumn(bar_width=24),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
            )
            self._task = self._bar.add_task("train", total=total, completed=start, info="")
            self._bar.start()

    def update(self, step: int, row: Mapping[str, Any], written: bool) -> None:
        if self._bar is None:
            if written:
                line = format_line(step, self.total, row)
                self.console.print(line, markup=False, highlight=False, soft_wrap=True)
            return
        self._bar.update(self._task, completed=step, info=" | ".join(_figures(row)))
        if _has_eval(row):  # eval figures stay in the scrollback
            line = format_line(step, self.total, row)
            self._bar.console.print(line, markup=False, highlight=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class Stopwatch:
    """Seconds per phase of a step, as `time/<phase>_s` metrics.

    >>> sw = Stopwatch()
    >>> with sw("generate"):
    ...     pass
    >>> sorted(sw.lap())
    ['time/generate_s']
    """

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self._seconds[phase] = self._seconds.get(phase, 0.0) + elapsed

    def lap(self) -> dict[str, float]:
        """The seconds accumulated since the last lap, and start again."""
        out = {f"time/{k}_s": v for k, v in self._seconds.items()}
        self._seconds = {}
        return out


class RunLog:
    """The run directory of one run, and every place its metrics go.

    A context manager: entering creates the directory (`run_dir`, or
    `runs/<recipe>-<timestamp>` when None), writes `config` there (YAML text, or a
    mapping dumped as YAML), opens the writers and prints where the directory is;
    leaving writes `summary.json` and `curves.png` (also when the body raised) and
    closes everything. On processes with `is_main=False` every method does nothing.

    A fresh run refuses a directory that already holds metrics.jsonl, unless
    `overwrite` (which deletes the files this class writes, nothing else) or
    `resume_step` (which keeps the rows up to that step and appends) is given.
    Rows are written for steps that are multiples of `every_steps`, the last step, and
    any row with `eval/` metrics; the progress display moves on every step.
    """

    def __init__(
        self,
        run_dir: str | Path | None,
        *,
        total_steps: int,
        recipe: str = "run",
        config: Mapping[str, Any] | str | None = None,
        is_main: bool = True,
        resume_step: int | None = None,
        overwrite: bool = False,
        every_steps: int = 1,
        tensorboard: bool = False,
        wandb: bool = False,
        wandb_project: str = "referee",
        progress_bar: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        if every_steps < 1:
            raise ValueError(f"every_steps must be >= 1, got {every_steps}")
        self.run_dir = Path(run_dir) if run_dir is not None else default_run_dir(recipe)
        self.total_steps, self.recipe, self.is_main = total_steps, recipe, is_main
        self.resume_step, self.every_steps = resume_step, every_steps
        self._config, self._overwrite = config, overwrite
        self._tb_on, self._wandb_on, self._wandb_project = tensorboard, wandb, wandb_project
        self.console = Console(file=stream, highlight=False)
        self._progress_bar = progress_bar
        self.rows: list[Row] = []
        """Every row of metrics.jsonl, including those kept from before a resume."""
        self.extra_summary: dict[str, Any] = {}
        """Added to summary.json (and overriding its entries), e.g. the eval of the final
        model when the recipe computed it outside `log`; NaN/inf become null."""
        self._file: TextIO | None = None
        self._tb: Any = None
        self._wandb: Any = None
        self._progress: _Progress | None = None
        self._warned: set[str] = set()
        self._last_step = resume_step if resume_step is not None else -1
        self._start = 0.0

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS

    # --- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> RunLog:
        self._start = time.perf_counter()
        if not self.is_main:
            return self
        self._prepare_dir()
        if self._config is not None:
            text = self._config if isinstance(self._config, str) else _yaml(self._config)
            (self.run_dir / CONFIG).write_text(text)
        self._file = self.metrics_path.open("a", encoding="utf-8")
        try:
            if self._tb_on:
                self._open_tensorboard()
            if self._wandb_on:
                self._open_wandb()
        except BaseException:
            self._file.close()
            self._file = None
            raise
        start = self.resume_step or 0
        self._progress = _Progress(self.console, self.total_steps, start, self._progress_bar)
        resuming = self.resume_step is not None
        what = f"resuming after step {self.resume_step}" if resuming else "run directory"
        self.print(f"{what}: {self.run_dir.resolve()}")
        return self

    def _prepare_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.resume_step is not None:
            self.rows = truncate_metrics(self.metrics_path, self.resume_step)
            return
        if self.metrics_path.exists() and not self._overwrite:
            raise FileExistsError(
                f"{self.metrics_path} exists from an earlier run: resume that run, choose "
                "another run directory, or delete it (or pass overwrite=True)"
            )
        for name in (METRICS, SUMMARY, PLOT):
            (self.run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(self.run_dir / TB_DIR, ignore_errors=True)

    def _open_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            self.warn(f"TensorBoard logging is off: {e} (pip install tensorboard)")
            return
        # purge_step hides events a killed run wrote after the step it resumes from.
        purge = self.resume_step + 1 if self.resume_step is not None else None
        self._tb = SummaryWriter(str(self.run_dir / TB_DIR), purge_step=purge)

    def _open_wandb(self) -> None:
        try:
            import wandb
        except ImportError:
            self.warn("W&B logging is off: the wandb package is not installed (pip install wandb)")
            return
        id_file = self.run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        config = self._config
        if isinstance(config, str):
            import yaml

            config = yaml.safe_load(config)
        self._wandb = wandb.init(
            project=self._wandb_project,
            name=self.run_dir.name,
            id=run_id,
            resume="allow",
            dir=str(self.run_dir),
            config=dict(config or {}),
        )

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc_type is None:
            status = "completed"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "interrupted"
        else:
            status = f"failed: {exc_type.__name__}: {exc}"
        self.close(status)

    def close(self, status: str = "completed") -> dict[str, Any] | None:
        """Writes the plot and summary.json, closes the writers; returns the summary."""
        if not self.is_main or self._file is None:
            return None
        if self._progress is not None:
            self._progress.close()
        summary = self.summary(status)
        try:
            save_plot(self.rows, self.run_dir / PLOT)
        except (OSError, ValueError) as e:  # a failed plot must not hide the run's outcome
            summary["plot_error"] = f"{type(e).__name__}: {e}"
            self.warn(f"the plot was not written: {e}")
        (self.run_dir / SUMMARY).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        self._file.close()
        self._file = None
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish(exit_code=0 if status == "completed" else 1)
        before, after = summary["eval_before"], summary["eval_after"]
        if before and after:
            self.print(
                f"eval accuracy: {_fmt(before.get('accuracy'))} before, "
                f"{_fmt(after.get('accuracy'))} after"
            )
        self.print(f"run directory: {self.run_dir.resolve()} ({status})")
        return summary

    # --- logging ----------------------------------------------------------------------

    def log(self, step: int, metrics: Mapping[str, Any]) -> Row | None:
        """Records the metrics of `step` (nested mappings are flattened with `/`).

        Returns the row as written (None when this step is not written). Raises
        ValueError for a step below one already logged (a resume or counting bug).
        """
        if not self.is_main:
            return None
        if self._file is None:
            raise RuntimeError("RunLog.log outside `with RunLog(...)`")
        if step < self._last_step:
            raise ValueError(f"step {step} logged after step {self._last_step}")
        self._last_step = step
        row, nonfinite = _clean(step, metrics)
        for key, value in nonfinite.items():
            if key not in self._warned:
                self._warned.add(key)
                self.warn(f"{key} is {value} at step {step}; written as null (noted in _nonfinite)")
        written = step % self.every_steps == 0 or step == self.total_steps or _has_eval(row)
        if self._progress is not None:
            self._progress.update(step, row, written)
        if not written:
            return None
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()
        self.rows.append(row)
        numbers = {
            k: v
            for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"
        }
        if self._tb is not None:
            for key, value in numbers.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)
        return row

    def print(self, message: str) -> None:
        """A line on the console (above the progress bar when one is shown); rank 0 only."""
        if self.is_main:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        self.print(f"warning: {message}")

    # --- the summary ------------------------------------------------------------------

    def summary(self, status: str = "completed") -> dict[str, Any]:
        """What summary.json holds; `extra_summary` entries are added (and win)."""
        evals = [_eval_part(r) for r in self.rows if _has_eval(r)]
        train = [r for r in self.rows if any(_is_train_key(k) for k in r)]
        steps = max((r["step"] for r in self.rows), default=self.resume_step or 0)
        final = {k: v for k, v in train[-1].items() if not k.startswith("eval/")} if train else {}
        out: dict[str, Any] = {
            "run_dir": str(self.run_dir.resolve()),
            "recipe": self.recipe,
            "status": status,
            "steps": steps,
            "total_steps": self.total_steps,
            "wall_s": round(time.perf_counter() - self._start, 3),
            "resumed_from": self.resume_step,
            "eval_before": evals[0] if evals else None,
            "eval_after": evals[-1] if len(evals) > 1 else None,
            "final": final,
        }
        out.update(_json_safe(self.extra_summary))
        return out


def _json_safe(value: Any) -> Any:
    """`value` with every NaN/inf float replaced by None (summary.json is strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _has_eval(row: Mapping[str, Any]) -> bool:
    return any(k.startswith("eval/") for k in row)


def _is_train_key(key: str) -> bool:
    return key != "step" and not key.startswith(("eval/", "_"))


def _eval_part(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"step": row["step"], **{k[5:]: v for k, v in row.items() if k.startswith("eval/")}}


def _yaml(config: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True)


# --- the plot -------------------------------------------------------------------------


def _series(rows: list[Row], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [s for s, _ in pts], [float(v) for _, v in pts]


def _moving_mean(values: list[float], window: int) -> list[float]:
    """Mean of each value and the `window - 1` before it (fewer at the start)."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def make_figure(rows: list[Row]) -> Any:
    """Two panels: training reward mean (with a moving average once there are enough
    points) and eval accuracy (and pass@k, k > 1) against step. A matplotlib Figure
    built without pyplot, so no global backend state is touched."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_r, ax_e = fig.subplots(1, 2)
    steps, rewards = _series(rows, "reward/mean")
    if steps:
        window = max(1, len(steps) // 10)
        ax_r.plot(steps, rewards, lw=1, alpha=0.4 if window > 1 else 1.0, label="reward/mean")
        if window > 1:
            ax_r.plot(
                steps, _moving_mean(rewards, window), lw=2, label=f"moving mean ({window} rows)"
            )
        ax_r.legend(loc="lower right", fontsize=8)
    else:
        ax_r.text(0.5, 0.5, "no reward rows", ha="center", va="center", transform=ax_r.transAxes)
    ax_r.set(xlabel="step", ylabel="reward (mean over batch)", title="Training reward")
    ax_r.grid(alpha=0.3)
    eval_keys = ["eval/accuracy"] + sorted(
        {k for r in rows for k in r if _is_pass_key(k)} - {"eval/pass@1"}
    )
    plotted = False
    for key in eval_keys:
        steps, values = _series(rows, key)
        if steps:
            ax_e.plot(steps, values, marker="o", label=key.removeprefix("eval/"))
            plotted = True
    if plotted:
        ax_e.legend(loc="lower right", fontsize=8)
    else:
        ax_e.text(0.5, 0.5, "no eval rows", ha="center", va="center", transform=ax_e.transAxes)
    ax_e.set(xlabel="step", ylabel="held-out", title="Eval accuracy", ylim=(-0.02, 1.02))
    ax_e.grid(alpha=0.3)
    return fig


def save_plot(rows: list[Row], path: str | Path) -> Path:
    """Writes `make_figure(rows)` as a PNG."""
    p = Path(path)
    make_figure(rows).savefig(p, dpi=110, format="png")
    return p


if __name__ == "__main__":  # redraw a run's plot: python -m referee.trainer.observe RUN_DIR
    run = Path(sys.argv[1])
    print(save_plot(read_metrics(run / METRICS), run / PLOT))
