"""What a run leaves for people: metrics as JSON lines and TensorBoard events, results.json,
a summary table, and figures. TensorBoard files are written with tensorboardX, which needs no
TensorFlow."""

from __future__ import annotations

import json
import math
import pathlib

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
import tensorboardX  # noqa: E402


class MetricWriter:
  """Scalars to `metrics.jsonl` (one JSON object per line) and to TensorBoard in the workdir."""

  def __init__(self, workdir: str | pathlib.Path):
    self.path = pathlib.Path(workdir) / 'metrics.jsonl'
    self._tb = tensorboardX.SummaryWriter(str(pathlib.Path(workdir) / 'tensorboard'))

  def write(self, step: int, scalars: dict[str, float], prefix: str = 'train') -> None:
    scalars = {f'{prefix}/{k}': float(v) for k, v in scalars.items()}
    with self.path.open('a') as f:
      f.write(json.dumps({'step': step, **scalars}) + '\n')
    for name, value in scalars.items():
      if math.isfinite(value):
        self._tb.add_scalar(name, value, step)

  def close(self) -> None:
    self._tb.close()


def _fmt(value, digits=3) -> str:
  return '-' if value is None else f'{value:.{digits}f}'


def table(results: dict) -> str:
  """A fixed-width summary of results['splits'] for the end of a run."""
  head = (f'{"split":<16}{"sizes":>10}{"token acc":>11}{"seq acc":>9}{"depth":>7}'
          f'{"E[d]":>7}{"ρ(d,c)":>8}')
  lines = [head, '-' * len(head)]
  for name, r in results['splits'].items():
    sizes = f'{min(r["sizes"])}-{max(r["sizes"])}'
    lines.append(f'{name:<16}{sizes:>10}{_fmt(r["token_accuracy"]):>11}'
                 f'{_fmt(r["sequence_accuracy"]):>9}{_fmt(r["mean_depth"], 2):>7}'
                 f'{_fmt(r["mean_expected_depth"], 2):>7}'
                 f'{_fmt(r["spearman_depth_complexity"], 2):>8}')
  return '\n'.join(lines)


def write_results(workdir: str | pathlib.Path, results: dict) -> pathlib.Path:
  path = pathlib.Path(workdir) / 'results.json'
  path.write_text(json.dumps(results, indent=2) + '\n')
  return path


def plot_per_size(results: dict, path: str | pathlib.Path) -> pathlib.Path:
  """Token accuracy and mean executed depth against size, one line per split."""
  fig, (ax_acc, ax_depth) = plt.subplots(1, 2, figsize=(10, 3.8))
  for name, r in results['splits'].items():
    sizes = sorted(int(s) for s in r['per_size'])
    per = {int(s): v for s, v in r['per_size'].items()}
    ax_acc.plot(sizes, [per[s]['token_accuracy'] for s in sizes], 'o-', label=name, ms=3)
    ax_depth.plot(sizes, [per[s]['mean_depth'] for s in sizes], 'o-', label=name, ms=3)
  train_sizes = results.get('train_sizes')
  for ax in (ax_acc, ax_depth):
    if train_sizes:
      ax.axvspan(min(train_sizes) - 0.5, max(train_sizes) + 0.5, color='0.9', zorder=0,
                 label='training range')
    ax.set_xlabel('size')
  ax_acc.set_ylabel('token accuracy (answer tokens)')
  ax_acc.set_ylim(0, 1.02)
  ax_depth.set_ylabel('mean executed depth')
  ax_depth.set_ylim(0, results['max_depth'] + 0.5)
  ax_acc.legend(fontsize=8)
  fig.suptitle(f'{results["task"]} · decider {results["decider"]} · step {results["step"]}')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return pathlib.Path(path)
