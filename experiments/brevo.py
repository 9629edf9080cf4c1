"""BREVO with ANIRA: list every node a query node of a random DAG depends on, leaves first.

    python launch.py --config=experiments/brevo.py
    python launch.py --config=experiments/brevo.py:decider=online
    python launch.py --config=experiments/brevo.py:scale=paper
    python launch.py --config=experiments/brevo.py:quick --workdir=/tmp/brevo

Variants: `decider=NAME` (any registered decider), `scale=cpu|paper`, `quick` (a few steps, for
smoke tests; combines with either scale).

- `scale=cpu` (default) fits a 2-core CPU in about a quarter of an hour: N = 3-10 nodes with
  N = 7 held out, 16 node names, D = 6, width 64 (0.15 M parameters), batch 32, 1500 steps.
  Evaluated on the trained N, the held-out N = 7 and larger graphs (N = 11-13).
- `scale=paper` is the paper's setting, for an accelerator: N = 3-30 with N = 20 held out, 64
  node names, D = 6, width 320, 8 heads, 1 + 2 + 1 layers (5.0 M parameters), batch 256, 50k
  steps, bfloat16. Evaluated on the trained N, N = 20, and N = 31-36.
"""

from experiments import common


def get_config(arg=None):
  args = common.parse_arg(arg, decider='early', scale='cpu', quick=False)
  common.check_scale(args.scale)

  if args.scale == 'cpu':
    # max_nodes bounds the name pool: 16 names cover the longer split (13 nodes) with a few to
    # spare, and keep the vocabulary (21 tokens) small.
    config = common.task_experiment('brevo', train='3-10', holdout='7', longer='11-13',
                                    options={'max_nodes': 16}, decider=args.decider)
    # Width 64: at up to 103 tokens per example, width 128 takes twice as long per step.
    config.model.update(width=64, num_heads=4, max_depth=6)
    config.train.update(steps=1500, batch_size=32, warmup_steps=100, log_every=50,
                        checkpoint_every=500)
    config.eval.update(batch_size=64, every_steps=500)
  else:
    config = common.task_experiment('brevo', train='3-30', holdout='20', longer='31-36',
                                    options={'max_nodes': 64}, decider=args.decider)
    common.use_paper_scale(config, max_depth=6)

  if args.quick:
    common.make_quick(config)
  return config
