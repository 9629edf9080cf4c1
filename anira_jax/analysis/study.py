"""The paper's findings over several trained runs (seeds): what each run contributes, the
statistics with intervals over seeds and sequences, and the rules that turn them into verdicts.

Each run is read once into flat per-row records (`run_records`, saved beside the run), so that
the study's statistics and their bootstrap never trace a model again:
- `sequences`: one row per evaluated sequence of every split, at the trained D and at a raised
  one, each with the trained decider and `forced` (every token runs all T iterations: the
  `fixed` decider on the same parameters, which asks whether the model can use more depth, not
  whether its decider spends it): its split, T, answer and correct tokens, depth sums, the
  ceiling's expected correct tokens (ambiguous tasks) and, for tasks graded by generation,
  whether the generated answer is right;
- `tokens`: one row per annotated token of the in-distribution split at the trained D: depth,
  expected depth, complexity and every feature at the token's own position (the prediction its
  depth decides) and at both neighbours (`name@-1`, `name@+1`);
- `timing` (tasks with feature groups): one row per annotated token of the right answers, as
  `analysis.timing` regresses them (BREVO: generated answers).

A task's accuracy is read as the task is scored: the share of right generated answers (BREVO),
token accuracy as a share of the exact ceiling (LANO), token accuracy otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import tasks
from anira_jax import inspect, stats
from anira_jax import trace as trace_lib
from anira_jax.analysis import alignment, timing

OFFSETS = (-1, 1)
# What `run_records` writes; records of another version are read again from their run.
# 2: sequence rows with every token forced to T iterations (`forced`).
RECORDS_VERSION = 2


def _sequence_rows(trace: trace_lib.Trace, split: int, max_depth: int, forced: bool,
                   ceiling_feature: str | None, right_B: np.ndarray | None) -> dict:
  answer = trace.answer_mask.astype(np.float64)
  rows = {'split': np.full(trace.batch_size, split),
          'max_depth': np.full(trace.batch_size, max_depth),
          'forced': np.full(trace.batch_size, float(forced)),
          'size': trace.size.astype(np.int64),
          'answer_tokens': answer.sum(-1), 'correct_tokens': (answer * trace.correct).sum(-1),
          'depth_sum': (answer * trace.depth).sum(-1),
          'expected_depth_sum': (answer * trace.expected_depth).sum(-1)}
  if ceiling_feature is not None:
    rows['ceiling_sum'] = (answer * trace.features[ceiling_feature]).sum(-1)
  if right_B is not None:
    rows['right'] = right_B.astype(np.float64)
  return rows


def _token_rows(trace: trace_lib.Trace) -> dict:
  mask = trace.analysis_mask
  rows = {'sequence': np.broadcast_to(np.arange(trace.batch_size)[:, None], mask.shape)[mask],
          'depth': trace.depth[mask].astype(np.float64),
          'expected_depth': trace.expected_depth[mask].astype(np.float64)}
  columns = {'complexity': trace.complexity, **trace.features}
  annotated = trace.analysis_mask
  for name, values in columns.items():
    rows[name] = values[mask].astype(np.float64)
    for k in OFFSETS:
      neighbour = alignment.shifted(annotated, k, fill=False)[mask]
      # NaN where the neighbour is not a real, annotated prediction.
      rows[f'{name}@{k:+d}'] = np.where(neighbour, alignment.shifted(values, k)[mask], np.nan)
  return rows


def _timing_rows(trace: trace_lib.Trace, task: tasks.Task) -> dict:
  mask = trace.analysis_mask & trace.sequence_correct[:, None]
  rows = {'sequence': np.broadcast_to(np.arange(trace.batch_size)[:, None], mask.shape)[mask],
          'expected_depth': trace.expected_depth[mask].astype(np.float64),
          'samples_total': np.full(mask.sum(), trace.analysis_mask.any(-1).sum())}
  for name in [task.timing_control, *(f for g in task.feature_groups.values() for f in g)]:
    rows[name] = trace.features[name][mask].astype(np.float64)
  return rows


def _merge(parts: Sequence[dict]) -> dict:
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def run_records(run: inspect.Run, raised_depth: int, *, num_batches: int | None = None,
                batch_size: int | None = None) -> dict[str, dict[str, np.ndarray]]:
  """{'sequences', 'tokens'[, 'timing'], 'meta'} of one run (see the module docstring);
  `num_batches` and `batch_size` of each split (default: the run's evaluation counts)."""
  task, counts = run.task, dict(num_batches=num_batches, batch_size=batch_size)
  splits = list(run.experiment.splits)
  generative = isinstance(task, tasks.Generative)
  sequences, offset = [], 0
  for i, name in enumerate(splits):
    first = offset  # an example keeps its id in every variant, so the bootstrap pairs them
    for forced in (False, True):
      decider = 'fixed' if forced else None
      for depth in (run.max_depth, raised_depth):
        trained = not forced and depth == run.max_depth
        trace = run.trace_split(name, max_depth=depth, decider=decider, **counts)
        right = None
        if generative:
          generated, verdicts = run.generate_split(name, max_depth=depth, decider=decider,
                                                   **counts)
          right = list(verdicts.values())[-1]
          if i == 0 and trained:
            timed = generated
        rows = _sequence_rows(trace, i, depth, forced, task.ceiling_feature, right)
        rows['sequence'] = first + np.arange(trace.batch_size)
        offset = first + trace.batch_size
        sequences.append(rows)
        if i == 0 and trained:
          in_distribution = trace
  records = {'sequences': _merge(sequences), 'tokens': _token_rows(in_distribution),
             'meta': {'version': np.asarray(RECORDS_VERSION)}}
  if task.feature_groups:
    records['timing'] = _timing_rows(timed if generative else in_distribution, task)
  return records


def current(records: dict) -> bool:
  """Whether records were written by this `run_records` (`RECORDS_VERSION`)."""
  return int(records.get('meta', {}).get('version', 1)) == RECORDS_VERSION


def save(records: dict, path) -> None:
  np.savez_compressed(path, **{f'{kind}/{name}': values for kind, rows in records.items()
                               for name, values in rows.items()})


def load(path) -> dict[str, dict[str, np.ndarray]]:
  records: dict[str, dict[str, np.ndarray]] = {}
  with np.load(path) as data:
    for key in data.files:
      kind, name = key.split('/', 1)
      records.setdefault(kind, {})[name] = data[key]
  return records


# --- statistics of one run's records (for `stats.seed_bootstrap`) ---------------------------

def accuracy_kind(task: tasks.Task) -> str:
  """How the task's accuracy is read (see the module docstring): 'right', 'ceiling' or
  'token'."""
  if isinstance(task, tasks.Generative):
    return 'right'
  return 'ceiling' if task.ceiling_feature else 'token'


def _rows(r: dict, split: int, max_depth: int, forced: bool) -> np.ndarray:
  return (r['split'] == split) & (r['max_depth'] == max_depth) & (r['forced'] == forced)


def accuracy(split: int, max_depth: int, kind: str, forced: bool = False):
  """The statistic: accuracy of a split at T (with the trained decider, or every token
  `forced` to T iterations), read as `kind` says: 'right' (generated answers), 'ceiling'
  (token accuracy over the ceiling's), 'token' (token accuracy)."""
  def statistic(r):
    rows = _rows(r, split, max_depth, forced)
    if not rows.any():
      return None
    if kind == 'right':
      return float(r['right'][rows].mean())
    denominator = r['ceiling_sum' if kind == 'ceiling' else 'answer_tokens'][rows].sum()
    return float(r['correct_tokens'][rows].sum() / denominator) if denominator else None
  return statistic


def mean_depth(split: int, max_depth: int, expected: bool = False):
  """The statistic: mean executed (or expected) depth over a split's answer tokens at T, with
  the trained decider."""
  def statistic(r):
    rows = _rows(r, split, max_depth, forced=False)
    tokens = r['answer_tokens'][rows].sum()
    key = 'expected_depth_sum' if expected else 'depth_sum'
    return float(r[key][rows].sum() / tokens) if tokens else None
  return statistic


def contrast(first, second):
  """The statistic first − second (both statistics of one run)."""
  def statistic(r):
    a, b = first(r), second(r)
    return None if a is None or b is None else a - b
  return statistic


def spearman(feature: str, target: str = 'expected_depth'):
  """The statistic: Spearman ρ of the depth (or E[d]) against a feature column (`name@±1` for a
  neighbour), over the tokens where it is defined."""
  def statistic(r):
    x = r[feature]
    defined = ~np.isnan(x)
    return stats.spearman(r[target][defined], x[defined])
  return statistic


def variance_explained(groups: dict[str, tuple[str, ...]], control: str, key: str):
  """The statistic: one figure of `timing.variance_explained` ('r2_control', or
  'groups/<group>/<added|unique|partial>') on a run's timing rows."""
  def statistic(r):
    result = timing.variance_explained(r['expected_depth'], {f: r[f] for g in groups.values()
                                                            for f in g},
                                       groups, r[control], per_feature=False)
    value = result
    for part in key.split('/'):
      value = value[part]
    return value
  return statistic


# --- choosing the depth prior (experiments/select_prior.py) ---------------------------------

def task_accuracy(split: dict) -> float:
  """A results.json split's accuracy as the task is scored (`accuracy_kind`)."""
  if 'generation' in split:
    return split['generation']['accuracy']
  return split.get('share_of_ceiling', split['token_accuracy'])


def prior_design(gammas: Sequence[float], bases: Sequence[float],
                 design: str) -> list[tuple[float, float]]:
  """The (γ, b) pairs a prior search trains: 'grid', the full product; 'corners', its four
  corners and its centre (the middle values; of an even count, the lower middle), a 2²
  factorial with a centre point for a task whose runs are too long for the whole grid."""
  if design == 'grid':
    return [(gamma, base) for gamma in gammas for base in bases]
  corners = [(gamma, base) for gamma in (gammas[0], gammas[-1]) for base in (bases[0], bases[-1])]
  centre = (gammas[(len(gammas) - 1) // 2], bases[(len(bases) - 1) // 2])
  return list(dict.fromkeys(corners + [centre]))


def choose_prior(points: Sequence[dict], tolerance: float) -> dict:
  """Of grid points {'accuracy', 'mean_depth', ...}: the least mean depth among those within
  `tolerance` of the best accuracy."""
  best = max(p['accuracy'] for p in points)
  near = [p for p in points if p['accuracy'] >= best - tolerance]
  return min(near, key=lambda p: (p['mean_depth'], -p['accuracy']))
