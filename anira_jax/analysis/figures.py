"""The analyses' figures, as PNG files. Each function takes an analysis result (or a trace) and
a path, writes one figure and returns the path."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
import numpy as np  # noqa: E402

from anira_jax import reporting  # noqa: E402
from anira_jax.trace import Trace  # noqa: E402


def _save(fig, path) -> pathlib.Path:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return pathlib.Path(path)


def depth_heatmap(trace: Trace, decode: Callable[[Sequence[int]], list[str]], path, *,
                  num_sequences: int = 4, max_tokens: int = 48, title: str = '') -> pathlib.Path:
  """Executed depth of every token of the first sequences, with the tokens written in the cells.

  Rows are `num_sequences` sequences spread evenly over the batch's lengths, shortest first;
  each shows its last `max_tokens` real tokens, right-aligned. Answer tokens are bold.
  """
  lengths = trace.real.sum(-1)
  order = np.argsort(lengths, kind='stable')
  picks = order[np.unique(np.linspace(0, len(order) - 1, num_sequences).round().astype(int))]
  rows = len(picks)
  windows = [range(max(0, int(lengths[b]) - max_tokens), int(lengths[b])) for b in picks]
  width = max((len(w) for w in windows), default=1)
  grid = np.full((rows, width), np.nan)
  fig, ax = plt.subplots(figsize=(max(6.0, 0.42 * width), 0.7 * rows + 1.4))
  offsets = [width - len(w) for w in windows]  # right-aligned: sequence ends line up
  for r, (b, window) in enumerate(zip(picks, windows)):
    grid[r, offsets[r]:] = trace.depth[b, list(window)]
  image = ax.imshow(np.ma.masked_invalid(grid), cmap='viridis', aspect='auto', vmin=1,
                    vmax=trace.max_depth)
  for r, (b, window) in enumerate(zip(picks, windows)):
    text = decode(trace.tokens[b, list(window)])
    for c, pos in enumerate(window):
      answer = trace.loss_mask is not None and trace.loss_mask[b, pos]
      col = offsets[r] + c
      ax.text(col, r, text[c], ha='center', va='center', fontsize=6,
              color='white' if grid[r, col] < (1 + trace.max_depth) / 2 else 'black',
              fontweight='bold' if answer else 'normal')
  ax.set_yticks(range(rows), [f'seq {b}' + (f' (size {trace.size[b]})' if trace.size is not None
                                            else '') for b in picks], fontsize=7)
  ax.set_xticks([])
  ax.set_xlabel('last tokens of each sequence (answer tokens bold)')
  fig.colorbar(image, ax=ax, label='executed depth', fraction=0.03)
  ax.set_title(title or 'executed depth per token')
  return _save(fig, path)


def depth_vs_complexity(result: dict, path, *, title: str = '') -> pathlib.Path:
  """Mean executed (± std) and expected depth per complexity value and per size."""
  panels = [k for k in ('depth_per_complexity', 'depth_per_size') if k in result]
  fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5 * max(len(panels), 1), 3.6),
                           squeeze=False)
  for ax, key in zip(axes[0], panels):
    table = result[key]
    ax.errorbar(table['value'], table['mean_depth'], yerr=table['std_depth'], fmt='o-', ms=3,
                capsize=2, label='executed depth (± std)')
    if 'mean_expected_depth' in table:
      ax.plot(table['value'], table['mean_expected_depth'], 's--', ms=3, label='expected depth')
    ax.set_xlabel('complexity' if key == 'depth_per_complexity' else 'size')
    ax.set_ylabel('depth (answer tokens)')
    ax.legend(fontsize=7)
  corr = result.get('correlations', {}).get('complexity', {}).get('expected_depth', {})
  rho = corr.get('spearman')
  fig.suptitle((title + ' · ' if title else '') +
               (f'Spearman ρ(E[d], complexity) = {rho:.2f}' if rho is not None else ''))
  return _save(fig, path)


def generalization_figure(result: dict, path, *, title: str = '') -> pathlib.Path:
  """`reporting.accuracy_depth_vs_size` of `generalization.generalization`'s result, one line
  per T."""
  series = {f'T = {d}' + (' (trained)' if int(d) == result['trained_max_depth'] else ''):
            table['per_size'] for d, table in result['by_max_depth'].items()}
  return reporting.accuracy_depth_vs_size(series, path, train_sizes=result['train_sizes'],
                                          title=title or 'generalization')


def variance_explained(result: dict, path, *, title: str = '') -> pathlib.Path:
  """R² of graph size alone and the R² each feature group (and feature) adds to it."""
  fig, (ax_g, ax_f) = plt.subplots(1, 2, figsize=(11, 3.8),
                                   gridspec_kw={'width_ratios': [1, 2]})
  value = lambda x: 0.0 if x is None else x  # noqa: E731
  names = [f'{result["control"]} (control)'] + list(result['groups'])
  heights = [value(result['r2_control'])] + [value(g['added']) for g in result['groups'].values()]
  ci = result.get('intervals', {})
  keys = ['r2_control'] + [f'groups/{g}/added' for g in result['groups']]
  err = np.array([[h - ci[k][0], ci[k][1] - h] if ci.get(k) else [0, 0]
                  for h, k in zip(heights, keys)]).T
  ax_g.bar(range(len(names)), heights, yerr=np.maximum(err, 0), capsize=3,
           color=['0.6', 'tab:blue', 'tab:orange', 'tab:green'][:len(names)])
  ax_g.set_xticks(range(len(names)), names, rotation=20, ha='right', fontsize=8)
  ax_g.set_ylabel('R² (control) / R² added')
  features = result.get('features', {})
  group_of = {f: g for g, fs in result['groups_features'].items() for f in fs}
  colors = {g: c for g, c in zip(result['groups'], ['tab:blue', 'tab:orange', 'tab:green'])}
  ax_f.bar(range(len(features)), [value(v['added']) for v in features.values()],
           color=[colors.get(group_of.get(f), '0.5') for f in features])
  ax_f.set_xticks(range(len(features)), list(features), rotation=30, ha='right', fontsize=8)
  ax_f.set_ylabel('R² added to the control')
  fig.suptitle((title + ' · ' if title else '') +
               f'{result["samples"]} correct samples, {result["tokens"]} tokens')
  return _save(fig, path)


def pareto(result: dict, path, *, title: str = '') -> pathlib.Path:
  """Accuracy against execution cost, one point per inference rule, the front as a line."""
  fig, ax = plt.subplots(figsize=(5.5, 4))
  points = result['points']
  cost, acc = result['cost'], result['accuracy']
  for label, p in points.items():
    if p[acc] is None:
      continue
    ax.scatter(p[cost], p[acc], s=18, color='tab:red' if label in result['pareto'] else '0.4')
    ax.annotate(label, (p[cost], p[acc]), fontsize=6, xytext=(3, 3), textcoords='offset points')
  front = [points[k] for k in result['pareto']]
  ax.plot([p[cost] for p in front], [p[acc] for p in front], '-', color='tab:red', lw=1,
          label='Pareto front')
  ax.set_xlabel(cost.replace('_', ' '))
  ax.set_ylabel(acc.replace('_', ' '))
  ax.legend(fontsize=7)
  ax.set_title(title or 'inference-rule trade-off')
  return _save(fig, path)
