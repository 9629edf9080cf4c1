"""GSM-Symbolic (Mirzadeh et al. 2024, arXiv 2410.05229): greedy chain-of-thought generation,
the benchmark's answer extraction, accuracy and per-token depth per variant.

A generation benchmark, not a task stream, so it is its own evaluation rather than a split of
`evaluation`: it reads the public JSONL files from a user-given directory (`GSM_symbolic.jsonl`,
`GSM_p1.jsonl`, `GSM_p2.jsonl` as apple/ml-gsm-symbolic publishes them: id, instance,
question, answer ending in '#### <number>', ...), prompts as the benchmark does (its preamble and
the common 8-shot GSM8K chain-of-thought exemplars of lm-evaluation-harness' gsm8k-cot.yaml in
its 'A: Let's think step by step. ... The final answer is N.' layout), decodes greedily with the
KV-cache decoder (`generation`) until EOS or 'Q:', and scores the benchmark's way: commas
removed, the last number in the response, compared as a float with the answer after '####'.
Accuracy is also given per instance set (the benchmark's 50 sets: mean and standard deviation).

Per variant it reports accuracy, mean executed depth of the generated tokens (each token's depth
is that of the position that predicted it), the depth histogram, and execution cost (Σ depths)
and decision cost (decision-head calls) over generated tokens, for the run's decider and —
`fixed_baseline` — for the same weights with every token at depth D. The paper's fixed-depth
baseline is a model fine-tuned with the fixed decider: the same command with `decider=fixed`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import re

import numpy as np

from anira_jax import generation, options
from anira_jax.anira import Anira

VARIANTS = {'main': 'GSM_symbolic.jsonl', 'p1': 'GSM_p1.jsonl', 'p2': 'GSM_p2.jsonl'}
PREAMBLE = 'As an expert problem solver, solve step by step the following mathematical questions.'
STOP = 'Q:'

# The common 8-shot GSM8K chain of thought (Wei et al. 2022, as lm-evaluation-harness'
# gsm8k-cot.yaml holds it): (question, reasoning, final answer).
SHOTS = (
    ('There are 15 trees in the grove. Grove workers will plant trees in the grove today. After '
     'they are done, there will be 21 trees. How many trees did the grove workers plant today?',
     'There are 15 trees originally. Then there were 21 trees after some more were planted. So '
     'there must have been 21 - 15 = 6', '6'),
    ('If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the '
     'parking lot?', 'There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5', '5'),
    ('Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have '
     'left in total?', 'Originally, Leah had 32 chocolates. Her sister had 42. So in total they '
     'had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39', '39'),
    ('Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many '
     'lollipops did Jason give to Denny?', 'Jason started with 20 lollipops. Then he had 12 after '
     'giving some to Denny. So he gave Denny 20 - 12 = 8', '8'),
    ('Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys '
     'does he have now?', 'Shawn started with 5 toys. If he got 2 toys each from his mom and dad, '
     'then that is 4 more toys. 5 + 4 = 9', '9'),
    ('There were nine computers in the server room. Five more computers were installed each day, '
     'from monday to thursday. How many computers are now in the server room?', 'There were '
     'originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 '
     'computers were added. 9 + 20 is 29', '29'),
    ('Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. '
     'How many golf balls did he have at the end of wednesday?', 'Michael started with 58 golf '
     'balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 '
     '= 33 golf balls', '33'),
    ('Olivia has $23. She bought five bagels for $3 each. How much money does she have left?',
     'Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has '
     '23 - 15 dollars left. 23 - 15 is 8', '8'),
)


@dataclasses.dataclass(frozen=True)
class Options(options.Options):
  """`config.gsm_symbolic`: the benchmark run after training (LLM scale)."""

  path: str = ''  # directory holding GSM_symbolic.jsonl, GSM_p1.jsonl, GSM_p2.jsonl; '' = none
  variants: str = 'main,p1,p2'  # which files, comma-separated
  shots: int = 8  # exemplars in the prompt (the benchmark's 8)
  max_new_tokens: int = 512  # most generated tokens per question
  batch_size: int = 32  # questions decoded together (global)
  limit: int = 0  # questions per variant, the first ones; 0 = all
  fixed_baseline: bool = True  # also run every token at depth D with the same weights
  chunk: int = 16  # positions per device call between the host's stop checks

  def check(self, path: str) -> None:
    for name in filter(None, self.variants.split(',')):
      options.choice(f'{path}.variants', name, list(VARIANTS))
    options.integer(f'{path}.shots', self.shots, 0)
    if self.shots > len(SHOTS):
      raise options.ConfigError(f'config.{path}.shots={self.shots}: there are {len(SHOTS)}')
    for field in ('max_new_tokens', 'batch_size', 'chunk'):
      options.integer(f'{path}.{field}', getattr(self, field), 1)
    options.integer(f'{path}.limit', self.limit, 0)
    if generation.LENGTH_QUANTUM % self.chunk:
      raise options.ConfigError(f'config.{path}.chunk={self.chunk} must divide '
                                f'{generation.LENGTH_QUANTUM}')


def read(directory: str | pathlib.Path, variant: str, limit: int = 0) -> list[dict]:
  """The records of one variant's JSONL file (the first `limit`, 0 = all)."""
  file = pathlib.Path(directory) / VARIANTS[variant]
  if not file.exists():
    raise FileNotFoundError(f'GSM-Symbolic {variant}: no {file}')
  records = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
  return records[:limit] if limit else records


def prompt(question: str, shots: int = 8) -> str:
  """The benchmark's prompt: preamble, `shots` exemplars, then the question."""
  parts = [PREAMBLE, '']
  for q, reasoning, final in SHOTS[:shots]:
    parts += [f'Q: {q}', f"A: Let's think step by step. {reasoning}. The final answer is {final}."]
  if shots:
    parts.append('')
  parts += [f'Q: {question}', "A: Let's think step by step."]
  return '\n'.join(parts)


def final_answer(response: str) -> float | None:
  """The benchmark's extraction: commas removed, the last number, as a float (None if none)."""
  numbers = re.findall(r'-?\d+\.?\d*', response.replace(',', ''))
  return float(numbers[-1]) if numbers else None


def target(answer: str) -> float:
  """The reference number: what follows '####' on the answer's last line."""
  return float(answer.split('####')[-1].strip().replace(',', ''))


def _stop_at(tokenizer):
  """`generation`'s stop test: keep the tokens before the one that starts 'Q:'."""
  def stop(made: np.ndarray) -> int | None:
    text = tokenizer.decode(made)
    cut = text.find(STOP)
    if cut < 0:
      return None
    keep = 0
    while keep < len(made) and len(tokenizer.decode(made[:keep + 1])) <= cut:
      keep += 1
    return keep
  return stop


def run_variant(anira: Anira, params, tokenizer, records: list[dict], opts: Options, *,
                bos_id: int, eos_ids, mesh=None) -> tuple[dict, list[dict]]:
  """(results, per-question records) of one variant for one model."""
  prompts = []
  for record in records:
    ids = tokenizer.encode(prompt(record['question'], opts.shots))
    prompts.append(np.concatenate([[bos_id], ids]).astype(np.int32) if bos_id > 0 else ids)
  # Similar lengths decode together: a batch runs as long as its longest prompt.
  order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
  outputs: dict[int, generation.Generated] = {}
  for start in range(0, len(order), opts.batch_size):
    rows = order[start:start + opts.batch_size]
    made = generation.generate_batch(
        anira, params, [prompts[i] for i in rows], max_new_tokens=opts.max_new_tokens,
        stop=_stop_at(tokenizer), eos_ids=tuple(eos_ids), chunk=opts.chunk, mesh=mesh)
    outputs.update(zip(rows, made))
  per_question, per_instance = [], collections.defaultdict(list)
  depths, calls = [], []
  for i, record in enumerate(records):
    out = outputs[i]
    text = tokenizer.decode(out.tokens)
    answer = final_answer(text)
    correct = answer is not None and answer == target(record['answer'])
    per_instance[record.get('instance', 0)].append(correct)
    depths.append(out.depth)
    calls.append(out.head_calls)
    per_question.append({'id': record.get('id'), 'instance': record.get('instance'),
                         'target': target(record['answer']), 'extracted': answer,
                         'correct': bool(correct), 'stopped': bool(out.stopped),
                         'generation': text, 'depth': out.depth.tolist()})
  depth = np.concatenate(depths) if depths else np.zeros(0, np.int32)
  head_calls = np.concatenate(calls) if calls else np.zeros(0, np.int32)
  set_accuracy = [float(np.mean(v)) for _, v in sorted(per_instance.items())]
  results = {
      'questions': len(records),
      'accuracy': float(np.mean([q['correct'] for q in per_question])) if records else None,
      'instance_sets': len(set_accuracy),
      'accuracy_mean_over_sets': float(np.mean(set_accuracy)) if set_accuracy else None,
      'accuracy_std_over_sets': float(np.std(set_accuracy)) if set_accuracy else None,
      'generated_tokens': int(depth.size),
      'mean_depth': float(depth.mean()) if depth.size else None,
      'depth_histogram': np.bincount(depth, minlength=anira.model_cfg.max_depth + 1)[1:].tolist(),
      'execution_cost': int(depth.sum()),
      'decision_cost': int(head_calls.sum()),
      'execution_cost_per_token': float(depth.mean()) if depth.size else None,
      'decision_cost_per_token': float(head_calls.mean()) if head_calls.size else None,
      'stopped_fraction': float(np.mean([q['stopped'] for q in per_question])) if records
                          else None,
  }
  return results, per_question


def evaluate(anira: Anira, params, tokenizer, opts: Options, *, bos_id: int, eos_ids,
             mesh=None, out_dir: str | pathlib.Path | None = None) -> dict:
  """results.json's 'gsm_symbolic' entry: per model (the decider's name, and 'fixed' for the
  fixed-depth baseline), per variant, `run_variant`'s results. Every process calls it; the
  per-question generations go to `out_dir/<model>_<variant>.jsonl` when given."""
  models = {anira.decider.name: (anira, params)}
  if opts.fixed_baseline and anira.decider.name != 'fixed':
    models['fixed'] = (Anira(anira.model_cfg, 'fixed'), {'model': params['model'], 'decider': {}})
  variants = [v for v in opts.variants.split(',') if v]
  data = {v: read(opts.path, v, opts.limit) for v in variants}
  results = {}
  for name, (model, model_params) in models.items():
    results[name] = {}
    for variant in variants:
      summary, questions = run_variant(model, model_params, tokenizer, data[variant], opts,
                                       bos_id=bos_id, eos_ids=eos_ids, mesh=mesh)
      results[name][variant] = summary
      if out_dir is not None:
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f'{name}_{variant}.jsonl').write_text(
            ''.join(json.dumps(q) + '\n' for q in questions))
  return {'max_depth': anira.model_cfg.max_depth, 'shots': opts.shots,
          'max_new_tokens': opts.max_new_tokens, 'models': results}


def table(entry: dict) -> str:
  """A fixed-width summary of results['gsm_symbolic']."""
  head = (f'{"model":<10}{"variant":<9}{"questions":>10}{"accuracy %":>12}{"depth":>8}'
          f'{"head calls/token":>18}')
  lines = [head, '-' * len(head)]
  fmt = lambda x, scale=1: '–' if x is None else f'{scale * x:.2f}'
  for name, variants in entry['models'].items():
    for variant, r in variants.items():
      lines.append(f'{name:<10}{variant:<9}{r["questions"]:>10}{fmt(r["accuracy"], 100):>12}'
                   f'{fmt(r["mean_depth"]):>8}{fmt(r["decision_cost_per_token"]):>18}')
  return '\n'.join(lines)


def write_synthetic(directory: str | pathlib.Path, *, templates: int = 4, instances: int = 2,
                    seed: int = 0) -> pathlib.Path:
  """Small files in the benchmark's format (every variant), for tests and the `:tiny`
  experiment: arithmetic word problems whose answers are known."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for offset, (variant, file) in enumerate(VARIANTS.items()):
    lines = []
    for template in range(templates):
      for instance in range(instances):
        question, answer = synthetic_problem(rng, steps=1 + offset)
        lines.append(json.dumps({
            'id': template, 'instance': instance, 'question': question, 'answer': answer,
            'original_id': template, 'original_question': question, 'original_answer': answer,
            'canary': 'synthetic (anira_jax tests), not GSM-Symbolic data'}))
    (directory / file).write_text('\n'.join(lines) + '\n')
  return directory


def synthetic_problem(rng: np.random.Generator, steps: int = 1) -> tuple[str, str]:
  """(question, answer in GSM8K's format) of a small addition problem with `steps` additions."""
  name = str(rng.choice(['Tom', 'Ana', 'Li', 'Sam']))
  thing = str(rng.choice(['apples', 'books', 'coins', 'pens']))
  values = [int(v) for v in rng.integers(1, 20, size=steps + 1)]
  question = f'{name} has {values[0]} {thing}.' + ''.join(
      f' {name} gets {v} more.' for v in values[1:]) + f' How many {thing} does {name} have?'
  total, lines = values[0], []
  for v in values[1:]:
    lines.append(f'{total} + {v} = {total + v}')
    total += v
  return question, '\n'.join(lines + [f'#### {total}'])
