"""Which training ingredients make adaptive depth extrapolate: one run of the grid, or the grid.

    python launch.py --config=experiments/extrapolation.py
    python launch.py --config=experiments/extrapolation.py:task=mano,decider=online,seed=1
    python launch.py --config=experiments/extrapolation.py:decider=tied,iteration_loss=1,solvable=0.5
    python -m experiments.extrapolation --out=workdirs/extrapolation      # the whole grid

One run (`get_config`): a tiny recurrent model on
- `task=parity` (default): running parity, trained on lengths 1-16, evaluated on 1-16, 17-32
  and 33-64;
- `task=mano`: MANO with addition only, mod 5 and no length markers (a marker names L, so an
  unseen L would bring an untrained token), trained on trees of L = 1-4 operations, evaluated
  on 1-4, 5-8 and 9-12 (a MANO-like DAG task as Altabaa et al.'s ADD-only graphs);
with RoPE (relative) positions by default, so nothing absolute ties the model to the trained
lengths, and these knobs (each off by default), the ingredients under study:
- `decider=NAME`: any registered decider (`tied` is Fan et al.'s T(n), `supervised` the oracle
  learned, `confidence` / `convergence` / `fixed_point` the zero-shot exits);
- `random_depth=batch|example`: a random depth cap per batch or example, uniform on 1..D;
- `iteration_loss=w`, `solvable=r`: per-iteration supervision, optionally only of tokens with
  complexity c <= t / r at iteration t;
- `position=rope|none|sinusoidal|learned`; `depth=D` (default 8); `seed`, `steps`, `quick`.

The grid (`python -m experiments.extrapolation`, module docstring of `main` below) trains a
factorial subset of these, three seeds each, evaluates every checkpoint at the trained D and at
a raised D, and writes `extrapolation.json`, `extrapolation.md` and a figure. Reruns resume
unfinished runs and read finished ones.
"""

from __future__ import annotations

from experiments import common

TASKS = ('parity', 'mano')
# (train sizes, evaluation splits) per task; the first split is the training range.
SIZES = {
    'parity': ('1-16', {'in_distribution': '1-16', 'longer': '17-32', 'longest': '33-64'}),
    'mano': ('1-4', {'in_distribution': '1-4', 'longer': '5-8', 'longest': '9-12'}),
}
RAISED_DEPTH = {'parity': 64, 'mano': 64}  # T of the evaluation past the trained D


def get_config(arg=None):
  args = common.parse_arg(arg, task='parity', decider='online', seed=0, depth=8, position='rope',
                          random_depth='none', iteration_loss=0.0, solvable=0.0, steps=0,
                          width=64, quick=False)
  if args.task not in TASKS:
    raise ValueError(f'task={args.task!r}; choose one of {", ".join(TASKS)}')
  train, splits = SIZES[args.task]
  options = ({'ops': '+', 'modulus': 5, 'max_ops': 12, 'length_marker': False,
              'knowledge_augment': False} if args.task == 'mano' else {})
  config = common.task_experiment(args.task, train=train, options=options, decider=args.decider)
  config.seed = args.seed
  config.eval.splits.update(splits)
  config.model.update(width=args.width, num_heads=4, max_depth=args.depth,
                      position=args.position)
  config.train.update(steps=args.steps or 2000, batch_size=64, warmup_steps=100, log_every=100,
                      checkpoint_every=500, random_depth=args.random_depth,
                      iteration_loss=args.iteration_loss,
                      iteration_loss_solvable=args.solvable)
  config.eval.update(every_steps=1000, batch_size=128, num_batches=2)
  # The online deciders share the paper's depth prior; the oracle and the supervised decider
  # map the largest training size to D.
  common.share_depth_prior(config, gamma=0.01, prior_base=1.5)
  if args.quick:
    common.make_quick(config)
  return config
