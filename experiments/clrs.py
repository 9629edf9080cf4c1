"""CLRS with ANIRA: classic algorithm problems, input -> output, with the execution traces removed.

    python launch.py --config=experiments/clrs.py
    python launch.py --config=experiments/clrs.py:decider=online
    python launch.py --config=experiments/clrs.py:scale=paper
    python launch.py --config=experiments/clrs.py:quick --workdir=/tmp/clrs

Variants: `decider=NAME` (any registered decider), `scale=cpu|paper|paper_large`, `quick` (a
few steps, for smoke tests; combines with any scale). Questions and answers are CLRS-Text's own
(tasks/clrs.py); the size is the input's size (list length, nodes).

- `scale=cpu` (default) fits a 2-core CPU: three easy algorithms (minimum, insertion_sort,
  binary_search), sizes 2-6 with 5 held out, D = 6, width 128 (1.65 M parameters, most of them
  the embedding of CLRS-Text's ~4,000 number tokens), batch 64, 2500 steps. Evaluated on the
  trained sizes, the held-out size 5 and longer inputs (7-8).
- `scale=paper` / `paper_large`: the paper's setting, for an accelerator: the 23 algorithms of
  `tasks.clrs.DEFAULT_ALGORITHMS` merged into one task, as the paper merges 23, sizes 4-16 (the
  smallest strongly_connected_components is sampled at) with 12 held out, D = 6, the paper's
  5.1 M / 13.7 M-parameter model (`common.PAPER_MODELS`; besides the embedding and LM head of
  CLRS-Text's ~4,000 number tokens), batch 256, 250k steps, bfloat16. Evaluated on the trained
  sizes, size 12, and sizes 17-24.
"""

from experiments import common


def get_config(arg=None):
  args = common.parse_arg(arg, decider='early', scale='cpu', quick=False)
  # CLRS is not in the study (experiments/study.py): no `study` scale.
  common.check_scale(args.scale, ('cpu', 'paper', 'paper_large'))

  # max_size is the largest evaluated size: it bounds the number tokens in the vocabulary.
  if args.scale == 'cpu':
    config = common.task_experiment(
        'clrs', train='2-6', holdout='5', longer='7-8', decider=args.decider,
        options={'algorithms': ('minimum', 'insertion_sort', 'binary_search'), 'max_size': 8})
    config.model.update(width=128, num_heads=4, max_depth=6)
    config.train.update(steps=2500, batch_size=64, warmup_steps=200, log_every=100,
                        checkpoint_every=1000)
    config.eval.every_steps = 1000
  else:
    # algorithms unset: the default 23
    config = common.task_experiment('clrs', train='4-16', holdout='12', longer='17-24',
                                    options={'max_size': 24}, decider=args.decider)
    common.use_paper_scale(config, max_depth=6, scale=args.scale)

  if args.quick:
    common.make_quick(config)
  return config
