"""Running parity with ANIRA — the main job.

    python launch.py --config=experiments/parity.py
    python launch.py --config=experiments/parity.py:decider=online
    python launch.py --config=experiments/parity.py:quick --workdir=/tmp/parity

Trains ANIRA-E on bit strings of length 1-16 and evaluates in distribution and on longer strings
(17-24, never seen). The shared depth prior b = 1.5 charges log 1.5 per iteration; without a
charge (b = 1) on strings up to 8 long, every token can be answered at depth 1 and depth need
not follow difficulty. Variants: `decider=NAME` (any registered decider), `quick` (a few steps,
for smoke tests), `ponder` (PonderNet's parity benchmark: vectors of 96 entries, 1-48 of them ±1
in training, 49-96 at test, in PonderNet's own input format: the whole vector read at one
position, tasks/parity.py's `vector` layout), `ponder,tokens` (the same vectors one entry per
token, the one target at the last: a harder setting than PonderNet's, not learned here).
"""

from experiments import common


def get_config(arg=None):
  args = common.parse_arg(arg, decider='early', quick=False, ponder=False, tokens=False)
  if args.tokens and not args.ponder:
    raise ValueError("config argument 'tokens' picks the layout of PonderNet's benchmark: use "
                     "it with 'ponder' (experiments/parity.py:ponder,tokens)")
  if args.ponder:
    config = common.task_experiment('parity', train='1-48', longer='49-96',
                                    options={'layout': 'ponder' if args.tokens else 'vector'},
                                    decider=args.decider)
  else:
    config = common.task_experiment('parity', train='1-16', longer='17-24', decider=args.decider)
  # Counting needs to know how many tokens came before: sinusoidal absolute positions give
  # that directly. With RoPE alone the model stalls near 0.96 of tokens: a leading run of ones
  # is one state at every iteration (the task's `bos` marker breaks that; see tasks/parity.py).
  config.model.position = 'sinusoidal'
  config.train.steps = 3000
  if args.ponder and not args.tokens:
    # The best schedule found (README, *PonderNet's own benchmark*): the parity of a count of n
    # entries is uncorrelated with every lower-degree function of the count, so sizes are
    # learned one after another; opening them smallest first over 180k of 200k steps (about
    # 23 min on 2 CPU cores) learns 1-13 exactly, not yet 1-48.
    config.model.max_depth = 6
    config.train.update(steps=200_000, curriculum_steps=180_000, log_every=1000,
                        checkpoint_every=10_000)
    config.eval.every_steps = 50_000

  if args.quick:
    common.make_quick(config)
  return config
