"""CLRS with ANIRA: classic algorithm problems, input -> output, with the execution traces removed.

    python launch.py --config=experiments/clrs.py
    python launch.py --config=experiments/clrs.py:decider=online
    python launch.py --config=experiments/clrs.py:scale=paper
    python launch.py --config=experiments/clrs.py:quick --workdir=/tmp/clrs

Variants: `decider=NAME` (any registered decider), `scale=cpu|paper`, `quick` (a few steps, for
smoke tests; combines with either scale). The size is the input's size (list length or nodes).

- `scale=cpu` (default) fits a 2-core CPU in about a quarter of an hour: three easy algorithms
  (minimum, insertion_sort, binary_search), sizes 2-6 with 5 held out, D = 6, width 128
  (0.6 M parameters), batch 64, 2500 steps. Evaluated on the trained sizes, the held-out size 5
  and longer inputs (7-8).
- `scale=paper` is the paper's setting, for an accelerator: every algorithm in tasks/clrs.py
  merged into one task (the paper merges 23), sizes 2-16 with 12 held out, D = 6, width 320,
  8 heads, 1 + 2 + 1 layers (5.1 M parameters), batch 256, 50k steps, bfloat16. Evaluated on the
  trained sizes, size 12, and sizes 17-24.
"""

from anira_jax import config as config_lib
from experiments import common

def get_config(arg=None):
  args = common.parse_arg(arg, decider='early', scale='cpu', quick=False)
  common.check_scale(args.scale)
  config = config_lib.default_config()
  config.decider.name = args.decider
  config.task.name = 'clrs'

  # max_size is the largest evaluated size: it bounds the number tokens in the vocabulary.
  if args.scale == 'cpu':
    config.task.options = {'algorithms': ('minimum', 'insertion_sort', 'binary_search'),
                           'max_size': 8}
    config.task.train_sizes = '2-6'
    config.task.holdout_sizes = '5'
    config.eval.splits = {'in_distribution': '2-4,6', 'held_out': '5', 'longer': '7-8'}
    config.model.update(width=128, num_heads=4, max_depth=6)
    config.train.update(steps=2500, batch_size=64, warmup_steps=200, log_every=100,
                        checkpoint_every=1000)
    config.eval.every_steps = 1000
  else:
    config.task.options = {'max_size': 24}  # algorithms unset: all of them
    config.task.train_sizes = '2-16'
    config.task.holdout_sizes = '12'
    config.eval.splits = {'in_distribution': '2-11,13-16', 'held_out': '12', 'longer': '17-24'}
    common.use_paper_scale(config, max_depth=6)

  if args.quick:
    common.make_quick(config)
  return config
