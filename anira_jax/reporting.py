"""What a run leaves for people: metrics as JSON lines and TensorBoard events, results.json,
a summary table, and figures. TensorBoard files are written with tensorboardX, which needs no
TensorFlow."""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
import tensorboardX  # noqa: E402


class MetricWriter:
  """Scalars to `metrics.jsonl` (one JSON object per line) and to TensorBoard in the workdir.

  A run that starts at `start_step` (a resumed checkpoint's step, 0 for a fresh start) first
  drops what an interrupted run wrote after that step, from metrics.jsonl and TensorBoard, so
  every step appears once.
  """

  def __init__(self, workdir: str | pathlib.Path, start_step: int = 0):
    self.path = pathlib.Path(workdir) / 'metrics.jsonl'
    _keep_rows_up_to(self.path, start_step)
    self._tb = tensorboardX.SummaryWriter(str(pathlib.Path(workdir) / 'tensorboard'),
                                          purge_step=start_step + 1)

  def write(self, step: int, scalars: dict[str, float], prefix: str = 'train') -> None:
    scalars = {f'{prefix}/{k}': float(v) for k, v in scalars.items()}
    with self.path.open('a') as f:
      f.write(json.dumps({'step': step, **scalars}) + '\n')
    for name, value in scalars.items():
      if math.isfinite(value):
        self._tb.add_scalar(name, value, step)

  def close(self) -> None:
    self._tb.close()


def _keep_rows_up_to(path: pathlib.Path, step: int) -> None:
  """Rewrites the JSON-lines file at `path` without its rows after `step` (and without a line cut
  short by a kill). Only a regular file is rewritten."""
  if not path.is_file():
    return
  rows = path.read_text().splitlines()
  kept = []
  for row in rows:
    try:
      if json.loads(row)['step'] <= step:
        kept.append(row)
    except (ValueError, KeyError, TypeError):
      continue
  if len(kept) < len(rows):
    tmp = path.with_name(f'.{path.name}.tmp')
    tmp.write_text(''.join(r + '\n' for r in kept))
    os.replace(tmp, path)


def fmt(value, digits: int = 3) -> str:
  """A figure for a table: `digits` decimals, '–' when undefined (None)."""
  return '–' if value is None else f'{value:.{digits}f}'


def table(results: dict) -> str:
  """A fixed-width summary of results['splits'] for the end of a run: teacher-forced accuracy,
  the share of the ceiling (ambiguous tasks), the accuracy of generated answers (tasks graded by
  generation), depth and its rank correlation with complexity."""
  splits = results['splits']
  ceiling = any('share_of_ceiling' in r for r in splits.values())
  generated = any('generation' in r for r in splits.values())
  head = (f'{"split":<16}{"sizes":>10}{"token acc":>11}{"seq acc":>9}'
          + (f'{"/ceiling":>10}' if ceiling else '') + (f'{"gen acc":>9}' if generated else '')
          + f'{"depth":>7}{"E[d]":>7}{"ρ(d,c)":>8}')
  lines = [head, '-' * len(head)]
  for name, r in splits.items():
    sizes = f'{min(r["sizes"])}-{max(r["sizes"])}'
    line = f'{name:<16}{sizes:>10}{fmt(r["token_accuracy"]):>11}{fmt(r["sequence_accuracy"]):>9}'
    if ceiling:
      line += f'{fmt(r.get("share_of_ceiling")):>10}'
    if generated:
      line += f'{fmt(r.get("generation", {}).get("accuracy")):>9}'
    lines.append(line + f'{fmt(r["mean_depth"], 2):>7}{fmt(r["mean_expected_depth"], 2):>7}'
                 f'{fmt(r["spearman_depth_complexity"], 2):>8}')
  return '\n'.join(lines)


def write_results(workdir: str | pathlib.Path, results: dict) -> pathlib.Path:
  path = pathlib.Path(workdir) / 'results.json'
  path.write_text(json.dumps(results, indent=2) + '\n')
  return path


def plot_per_size(results: dict, path: str | pathlib.Path) -> pathlib.Path:
  """Token accuracy and mean executed depth against size, one line per split."""
  return accuracy_depth_vs_size(
      {name: r['per_size'] for name, r in results['splits'].items()}, path,
      train_sizes=results['train_sizes'], max_depth=results['max_depth'],
      title=f'{results["task"]} · decider {results["decider"]} · step {results["step"]}')


def accuracy_depth_vs_size(series: Mapping[str, Mapping], path, *, train_sizes: Sequence[int],
                           max_depth: int | None = None, title: str = '') -> pathlib.Path:
  """Token accuracy and mean depth against size, one line per series ({label: {size: {...,
  'token_accuracy', 'mean_depth'}}}: evaluation splits, or max depths T); the training range is
  shaded and sizes inside it that were not trained on are marked as held out."""
  fig, (ax_acc, ax_depth) = plt.subplots(1, 2, figsize=(10, 3.8))
  plotted = set()
  for label, table in series.items():
    per = {int(s): v for s, v in table.items()}
    sizes = sorted(per)
    plotted |= set(sizes)
    ax_acc.plot(sizes, [per[s]['token_accuracy'] for s in sizes], 'o-', ms=3, label=label)
    ax_depth.plot(sizes, [per[s]['mean_depth'] for s in sizes], 'o-', ms=3, label=label)
  lo, hi = min(train_sizes), max(train_sizes)
  held = sorted(s for s in plotted if lo <= s <= hi and s not in set(train_sizes))
  for ax in (ax_acc, ax_depth):
    ax.axvspan(lo - 0.5, hi + 0.5, color='0.92', zorder=0, label='training range')
    for i, s in enumerate(held):
      ax.axvline(s, color='tab:red', ls=':', lw=1, label='held out' if i == 0 else None)
    ax.set_xlabel('size')
  ax_acc.set_ylabel('token accuracy (answer tokens)')
  ax_acc.set_ylim(0, 1.02)
  ax_depth.set_ylabel('mean executed depth')
  if max_depth:
    ax_depth.set_ylim(0, max_depth + 0.5)
  ax_acc.legend(fontsize=7)
  fig.suptitle(title or 'accuracy and depth per size')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return pathlib.Path(path)
