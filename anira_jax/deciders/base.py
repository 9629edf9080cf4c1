"""The decider interface: how a token's number of core iterations is chosen (DESIGN §3).

A decider is a set of pure functions that the recurrence (`anira_jax.recurrence`) calls around
every iteration of the core, whichever way the iterations are executed (static unroll, while
loop, compacted, decoding):

    state = start(params, h0, ctx)                  # before iteration 1
    for t in 1..T:
      m = runs(state, t)                            # [B, L]: does the token run iteration t?
      h = where(m, core(h), h)                      # the recurrence freezes the others
      y = readout(h) if reads_readout else None     # coda + head on every token's current state
      state = observe(params, state, h, t, y)       # after iteration t (online heads look here)
    decision = finish(params, state, h, t_end, depth)

`readout` is what the model would output if every token stopped now: the logits the inspection
API reports after each iteration (`Anira.readout_every_iteration`). The executors compute it
only for deciders that set `reads_readout` (zero-shot exits such as max-confidence), each in its
own way (decoding keeps the coda's keys and values per iteration), so that it is the same
function everywhere.

`runs` returns a float mask whose forward value is exactly 0 or 1; a decider that learns through
a straight-through estimator gives it a gradient (value = hard + (soft - stop_gradient(soft)),
parenthesised so the forward value is exact), and the recurrence turns that into
h = h + m * (core(h) - h) in the backward pass. The same functions in the same order are what
makes training, the inference loop, compaction and decoding agree.

A decider is one module: its class (a `name`, an `Options` dataclass holding its
hyper-parameters with their defaults and checks, its capabilities as class attributes, the steps
above) plus one line in the registry (`deciders/__init__.py`). Its options are the config
section `config.decider.<name>`; nothing outside the module knows them.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from anira_jax import options
from anira_jax.model.config import ModelConfig

RULES = ('median', 'mode', 'threshold', 'sample')  # what a halting decider's `rule` may name

State = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Context:
  """What a decider may know about the batch besides h0."""

  train: bool
  key: jax.Array | None  # randomness for training-time sampling (and rule='sample')
  # Task annotation: given to the oracle always, to a supervised decider only in training.
  complexity_BxL: jax.Array | None
  max_depth: int  # T at run time: the trained D, or a raised one at evaluation
  # Training only (random depth): the most iterations each token may run; the recurrence stops
  # a token there whatever its decider says. None: T.
  depth_cap_BxL: jax.Array | None = None


class Decision(NamedTuple):
  """What a decider reports once the recurrence has ended."""

  q_BxLxT: jax.Array  # float32 distribution over depths 1..T (sums to 1 per token)
  head_calls_BxL: jax.Array  # int32 decision-head calls made per token
  readout_BxLxD: jax.Array | None  # a state to read out instead of the exit state (ACT)
  target_BxL: jax.Array | None = None  # int32 depth the decider is taught to choose (supervised)


@dataclasses.dataclass(frozen=True)
class HeadOptions(options.Options):
  """Options of a decider with a decision head."""

  head_hidden: int = 64  # width of the decision head's MLP
  init_depth_bias: float = 3.0  # deep start: initial logit margin towards deep computation

  def check(self, path: str) -> None:
    super().check(path)
    options.integer(f'{path}.head_hidden', self.head_hidden, 1)
    options.number(f'{path}.init_depth_bias', self.init_depth_bias, minimum=float('-inf'))


@dataclasses.dataclass(frozen=True)
class DepthPriorOptions(options.Options):
  """The paper's depth term γ · KL(q ‖ p_b) (ANIRA-E and ANIRA-O share it) [paper]."""

  gamma: float = 0.01  # weight of KL(q ‖ p_b)
  # b in p_b(d) ∝ b^-d: 1 = uniform prior (no depth penalty), > 1 charges log b per iteration.
  prior_base: float = 1.5

  def check(self, path: str) -> None:
    super().check(path)
    options.number(f'{path}.gamma', self.gamma, allow_minimum=True)
    options.number(f'{path}.prior_base', self.prior_base)


@dataclasses.dataclass(frozen=True)
class RuleOptions(options.Options):
  """The inference rule of a halting decider (see `online`)."""

  rule: str = 'median'  # 'median' | 'mode' | 'threshold' | 'sample'
  threshold: float = 0.5  # halting-CDF level of rule='threshold'

  def check(self, path: str) -> None:
    super().check(path)
    options.choice(f'{path}.rule', self.rule, RULES)
    options.open_unit(f'{path}.threshold', self.threshold)


class Decider(abc.ABC):
  """Base class; subclasses set `name` and `Options` and implement the steps above."""

  name: ClassVar[str]
  Options: ClassVar[type[options.Options]] = options.Options
  reads_complexity: ClassVar[bool] = False  # reads the complexity annotation always (oracle)
  learns_from_complexity: ClassVar[bool] = False  # reads it in training only (supervised)
  reads_readout: ClassVar[bool] = False  # observes the readout after every iteration (zero-shot)
  # Zero-shot exits: the thresholds a trade-off analysis sweeps when it puts this decider on a
  # checkpoint in place of the trained one (empty: not such a decider).
  sweep: ClassVar[tuple[float, ...]] = ()
  step_loss: ClassVar[bool] = False  # train on the q-weighted loss of every iteration (PonderNet)
  has_rule: ClassVar[bool] = False  # `Options` holds an inference rule (`RuleOptions`)

  def __init__(self, opts: options.Options, model: ModelConfig):
    if not isinstance(opts, self.Options):
      raise TypeError(f'the {self.name} decider takes {self.Options.__name__}, not '
                      f'{type(opts).__name__}')
    self.options = opts
    self.model = model

  @classmethod
  def resolve(cls, opts: options.Options, train_sizes: tuple[int, ...]) -> options.Options:
    """`opts` with any default that depends on the experiment filled in (e.g. the oracle's
    largest complexity); most deciders have none."""
    del train_sizes
    return opts

  @property
  def rule_label(self) -> str | None:
    """The inference rule as reports name it ('median', 'threshold=0.3'); None without one."""
    if not self.has_rule:
      return None
    rule = self.options.rule
    return f'threshold={self.options.threshold:g}' if rule == 'threshold' else rule

  def head(self) -> 'Head | None':
    """The decision head, or None for deciders that learn nothing (fixed, oracle)."""
    return None

  def init(self, key: jax.Array) -> dict:
    """Parameters of the decision head ({} when there is none)."""
    head = self.head()
    if head is None:
      return {}
    return head.init(key, jnp.zeros((1, 1, self.model.width), jnp.float32))['params']

  @abc.abstractmethod
  def start(self, params: dict, h0_BxLxD: jax.Array, ctx: Context) -> State:
    ...

  @abc.abstractmethod
  def runs(self, state: State, t: jax.Array) -> jax.Array:
    """float32 [B, L], forward value 0 or 1: whether each token runs iteration t (1-based)."""

  def observe(self, params: dict, state: State, h_BxLxD: jax.Array, t: jax.Array,
              logits_BxLxV: jax.Array | None = None) -> State:
    """After iteration t; `logits` is the readout of `h` (None unless `reads_readout`)."""
    del params, h_BxLxD, t, logits_BxLxV
    return state

  @abc.abstractmethod
  def finish(self, params: dict, state: State, h_BxLxD: jax.Array, t_end: jax.Array,
             depth_BxL: jax.Array) -> Decision:
    """Called after the last iteration run (t_end); `h` is every token's final state."""

  def regularizer(self, decision: Decision, depth_BxL: jax.Array,
                  weight_BxL: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The decider's term of the training loss, averaged with `weight` over tokens."""
    del decision, depth_BxL, weight_BxL
    return jnp.zeros((), jnp.float32), {}

  def halting_TxBxL(self, params: dict, states_TxBxLxD: jax.Array,
                    depth_BxL: jax.Array) -> jax.Array:
    """λ_t after every iteration t, from the state after t, for inspection; NaN for deciders
    without a halting unit."""
    del params, depth_BxL
    return jnp.full(states_TxBxLxD.shape[:3], jnp.nan, jnp.float32)


class Head(nn.Module):
  """The small decision MLP: norm -> dense -> gelu -> dense, run in float32."""

  hidden: int
  outputs: int
  bias: jax.Array | float = 0.0  # initial output bias: how deep the untrained decider runs

  @nn.compact
  def __call__(self, h_BxLxD: jax.Array) -> jax.Array:
    x = nn.RMSNorm(dtype=jnp.float32)(h_BxLxD.astype(jnp.float32))
    x = nn.gelu(nn.Dense(self.hidden, dtype=jnp.float32)(x))
    bias = jnp.broadcast_to(jnp.asarray(self.bias, jnp.float32), (self.outputs,))
    return nn.Dense(self.outputs, dtype=jnp.float32, kernel_init=nn.initializers.normal(0.02),
                    bias_init=lambda *_: bias)(x)


class Halting(Decider):
  """A decider with a per-iteration halting unit λ_t = sigmoid(head(h_t)) (online, ponder, ACT)."""

  def head(self) -> Head:
    # Deep start: λ ≈ sigmoid(-init_depth_bias) at every step, so early training runs deep.
    return Head(self.options.head_hidden, 1, -self.options.init_depth_bias)

  def halting_probability(self, params: dict, h_BxLxD: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(self.head().apply({'params': params}, h_BxLxD)[..., 0])

  def halting_TxBxL(self, params, states_TxBxLxD, depth_BxL):
    # λ_T ≡ 1, as the decider sets it.
    lam_TxBxL = jax.vmap(lambda h: self.halting_probability(params, h))(states_TxBxLxD)
    return lam_TxBxL.at[-1].set(1.0)


def weighted_mean(x: jax.Array, weight: jax.Array) -> jax.Array:
  return jnp.sum(x * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def at_step(x_BxLxT: jax.Array, t: jax.Array) -> jax.Array:
  """x[..., t-1] for a (possibly traced) 1-based step t."""
  return jax.lax.dynamic_index_in_dim(x_BxLxT, t - 1, axis=-1, keepdims=False)


def set_step(x_BxLxT: jax.Array, t: jax.Array, value_BxL: jax.Array) -> jax.Array:
  return jax.lax.dynamic_update_index_in_dim(x_BxLxT, value_BxL.astype(x_BxLxT.dtype), t - 1, -1)


def halting_distribution(lam_BxLxT: jax.Array) -> jax.Array:
  """q(t) = λ_t ∏_{s<t}(1 − λ_s) with λ_T ≡ 1, so q sums to one over 1..T."""
  lam_BxLxT = lam_BxLxT.at[..., -1].set(1.0)
  survive_BxLxT = jnp.cumprod(1.0 - lam_BxLxT, axis=-1)
  before_BxLxT = jnp.concatenate([jnp.ones_like(survive_BxLxT[..., :1]),
                                  survive_BxLxT[..., :-1]], axis=-1)
  return lam_BxLxT * before_BxLxT


def log_geometric_prior(base: float, max_depth: int) -> jax.Array:
  """log p_b(d) for d = 1..T, with p_b(d) ∝ b^-d normalised on 1..T."""
  logits_T = -jnp.arange(1, max_depth + 1, dtype=jnp.float32) * jnp.log(jnp.float32(base))
  return jax.nn.log_softmax(logits_T)


def kl(p_BxLxT: jax.Array, log_r_T: jax.Array) -> jax.Array:
  """KL(p ‖ r) per token, with 0 log 0 = 0 and a finite gradient where p = 0 (a halting
  distribution whose tail underflowed to 0; xlogy's gradient there is log 0 = NaN once
  multiplied out, which stopped a PonderNet run)."""
  log_p_BxLxT = jnp.log(jnp.maximum(p_BxLxT, jnp.finfo(p_BxLxT.dtype).tiny))
  return jnp.sum(p_BxLxT * (log_p_BxLxT - log_r_T[None, None]), axis=-1)


def one_hot_depth(depth_BxL: jax.Array, max_depth: int) -> jax.Array:
  return jax.nn.one_hot(depth_BxL - 1, max_depth, dtype=jnp.float32)


def expected_depth(q_BxLxT: jax.Array) -> jax.Array:
  """E_q[d] per token."""
  depths_11T = jnp.arange(1, q_BxLxT.shape[-1] + 1, dtype=jnp.float32)[None, None]
  return jnp.sum(q_BxLxT * depths_11T, -1)
