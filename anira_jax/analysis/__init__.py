"""The paper's analyses (DESIGN §6), each a function of `anira_jax.inspect.Trace`s:

- `alignment.alignment`: depth per difficulty value; depth vs complexity features (Spearman,
  Pearson, bootstrap intervals);
- `generalization.generalization`: accuracy and depth per size and size category, per max depth;
- `timing.decision_timing`: R² of expected depth per feature group with graph size as a
  categorical control (BREVO);
- `tradeoff.tradeoff`: accuracy vs execution cost per inference rule, with the Pareto front.

`figures` draws them; `run.analyze` (and `python launch.py ... --mode=analyze`) does it all for a
workdir.
"""

from anira_jax.analysis import alignment, generalization, timing, tradeoff

__all__ = ['alignment', 'generalization', 'timing', 'tradeoff']
