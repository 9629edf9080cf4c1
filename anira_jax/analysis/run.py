"""The paper's analyses of one trained run: analysis.json, figures and a summary in the workdir.

    python launch.py --config=experiments/brevo.py --mode=analyze [--workdir=DIR]

Traces every configured evaluation split (the examples results.json was computed on) at the
trained D and at a raised D, then runs alignment (the feature of the prediction each depth
decides, and of its neighbours) and generalization for every task, decision timing for tasks
that group their features (`Task.feature_groups`, BREVO: on the answers it generates), and the
inference-rule trade-off for deciders with a rule (online, ponder; the others get their single
point), with the zero-shot exits' threshold sweeps on the same checkpoint. Writes analysis.json, analysis.md and the PNGs below.
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
from absl import logging

import tasks
from anira_jax import deciders, inspect
from anira_jax import trace as trace_lib
from anira_jax.analysis import alignment, figures, generalization, timing, tradeoff
from anira_jax.reporting import fmt

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9)  # median is the threshold 0.5


def _json_safe(x):
  if isinstance(x, dict):
    return {str(k): _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  if isinstance(x, (np.floating, float)):
    return float(x) if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  return x


def summary_markdown(result: dict) -> str:
  """A short human-readable account of `analyze`'s result."""
  lines = [f'# Analysis: {result["task"]} · decider {result["decider"]} · step {result["step"]}',
           '', f'Workdir `{result["workdir"]}`; trained D = {result["max_depth"]}.', '',
           '## Generalization', '', '| T | category | examples | token acc | seq acc | depth |',
           '|---|---|---|---|---|---|']
  for depth, table in result['generalization']['by_max_depth'].items():
    for cat, r in table['per_category'].items():
      lines.append(f'| {depth} | {cat} | {r["examples"]} | {fmt(r["token_accuracy"])} | '
                   f'{fmt(r["sequence_accuracy"])} | {fmt(r["mean_depth"], 2)} |')
  lines += ['', '## Alignment (all splits, answer tokens)', '',
            '| feature | Spearman ρ(E[d]) | 95% CI | Pearson r(E[d]) | 95% CI |',
            '|---|---|---|---|---|']
  for name, c in result['alignment']['all']['correlations'].items():
    e = c['expected_depth']
    ci = lambda v: '–' if v is None else f'[{v[0]:.2f}, {v[1]:.2f}]'  # noqa: E731
    lines.append(f'| {name} | {fmt(e["spearman"])} | {ci(e["spearman_ci"])} | '
                 f'{fmt(e["pearson"])} | {ci(e["pearson_ci"])} |')
  if 'timing' in result:
    t = result['timing']
    lines += ['', '## Decision timing (correct samples only)', '',
              f'{t["samples"]} of {t["samples_total"]} samples, {t["tokens"]} of '
              f'{t["tokens_total"]} tokens. R²({t["control"]} alone) = {fmt(t["r2_control"])}, '
              f'R²(full) = {fmt(t["r2_full"])}.', '',
              '| group | R² added | partial R² | unique R² |', '|---|---|---|---|']
    for g, r in t['groups'].items():
      lines.append(f'| {g} | {fmt(r["added"])} | {fmt(r["partial"])} | {fmt(r["unique"])} |')
  trade = result['tradeoff']
  lines += ['', '## Inference rules', '']
  if not trade['applicable']:
    lines.append(trade['reason'])
  lines += ['', '| rule | token acc | cost/token | Pareto |', '|---|---|---|---|']
  for label, p in trade['points'].items():
    lines.append(f'| {label} | {fmt(p["token_accuracy"])} | '
                 f'{fmt(p["execution_cost_per_token"], 2)} | '
                 f'{"yes" if label in trade["pareto"] else ""} |')
  lines += ['', '## Figures', ''] + [f'- `{f}`' for f in result['files'] if f.endswith('.png')]
  return '\n'.join(lines) + '\n'


def analyze(workdir, out_dir=None, *, step: int | None = None, num_batches: int | None = None,
            batch_size: int | None = None, raised_depth: int | None = None,
            thresholds=THRESHOLDS, exits: bool = True, n_boot: int = 200,
            seed: int = 0) -> dict:
  """Runs every analysis that applies to the run in `workdir`; returns analysis.json's content.

  The inference-rule trade-off has a point per rule (deciders with one) and, with `exits`, per
  threshold of every zero-shot exit (`Decider.sweep`) run in place of the trained decider.

  `raised_depth` is the T of the second generalization pass (default: config.eval.max_depth if
  it exceeds D, else 2·D; none for a standard, unshared model).
  """
  run = inspect.load(workdir, step)
  out = pathlib.Path(out_dir or run.workdir)
  out.mkdir(parents=True, exist_ok=True)
  config, task, d = run.config, run.task, run.max_depth
  train_sizes = run.experiment.train_sizes
  splits = list(run.experiment.splits)
  counts = dict(num_batches=num_batches, batch_size=batch_size)
  traces = {name: run.trace_split(name, **counts) for name in splits}
  pooled = trace_lib.concatenate(list(traces.values()))
  by_depth = {d: pooled}
  if run.anira.model_cfg.kind != 'standard':
    raised = raised_depth or (config.eval.max_depth if config.eval.max_depth > d else 2 * d)
    by_depth[raised] = trace_lib.concatenate(
        [run.trace_split(name, max_depth=raised, **counts) for name in splits])
  logging.info('traced %d sequences at T in %s', pooled.batch_size, sorted(by_depth))

  result = {'task': task.name, 'decider': config.decider.name, 'step': run.step,
            'workdir': str(run.workdir), 'max_depth': d, 'rule': run.rule,
            'splits': {n: list(run.sizes(n)) for n in splits}}
  result['alignment'] = {
      'all': alignment.alignment(pooled, pooled.analysis_mask, offsets=(-1, 1), n_boot=n_boot,
                                 seed=seed),
      'splits': {n: alignment.alignment(t, t.analysis_mask, n_boot=0)
                 for n, t in traces.items()}}
  result['generalization'] = generalization.generalization(by_depth, train_sizes, d)
  if task.feature_groups:
    # A task graded by generation (BREVO) is timed on the answers the model generated, with
    # the annotations of the order it chose and its right answers as the correct samples.
    timed = (trace_lib.concatenate([run.generate_split(name, **counts)[0] for name in splits])
             if isinstance(task, tasks.Generative) else pooled)
    result['timing'] = timing.decision_timing(timed, task.feature_groups, task.timing_control,
                                              n_boot=n_boot, seed=seed)

  # The split nearest the training distribution: the most training sizes, then config order.
  train = set(train_sizes)
  first = max(splits, key=lambda n: (len(train & set(run.sizes(n))), -splits.index(n)))
  # The zero-shot exits run on any checkpoint in place of its decider: their threshold sweeps
  # join the curve.
  exit_traces = {f'{name} {p:g}': run.trace_split(first, decider=name, threshold=p, **counts)
                 for name, cls in deciders.DECIDERS.items() for p in cls.sweep} if exits else {}
  if run.rule is not None:
    rule_traces = {'mode': run.trace_split(first, rule='mode', **counts),
                   'median': run.trace_split(first, rule='median', **counts)}
    for p in thresholds:
      rule_traces[f'threshold={p:g}'] = run.trace_split(first, rule='threshold', threshold=p,
                                                        **counts)
    result['tradeoff'] = {'applicable': True, 'split': first,
                          **tradeoff.tradeoff({**rule_traces, **exit_traces})}
  else:
    result['tradeoff'] = {
        'applicable': False, 'split': first,
        'reason': f'decider {config.decider.name!r} has no inference rule; only its own point'
                  + (' and the zero-shot exits.' if exit_traces else '.'),
        **tradeoff.tradeoff({config.decider.name: traces[first], **exit_traces})}

  title = f'{task.name} · {config.decider.name} · step {run.step}'
  files = [
      figures.depth_heatmap(traces[first], run.decode, out / 'depth_heatmap.png',
                            title=f'{title} · {first}'),
      figures.depth_vs_complexity(result['alignment']['all'], out / 'depth_vs_complexity.png',
                                  title=title),
      figures.generalization_figure(result['generalization'], out / 'generalization.png',
                                    title=title),
      figures.pareto(result['tradeoff'], out / 'pareto.png', title=title)]
  if 'timing' in result:
    files.append(figures.variance_explained(result['timing'], out / 'variance_explained.png',
                                            title=title))
  result['files'] = [p.name for p in files] + ['analysis.json', 'analysis.md']
  result = _json_safe(result)
  (out / 'analysis.json').write_text(json.dumps(result, indent=2) + '\n')
  (out / 'analysis.md').write_text(summary_markdown(result))
  return result
