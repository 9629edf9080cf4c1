"""Text: a packed next-token stream of local text/JSONL files, in a checkpoint's tokenizer.

Not a procedural task, but the same interface, so the training loop, its determinism per
(seed, step, host) and evaluation take it as they take the others: the corpus is tokenized once
(with the `tokenizers` package, from a Hugging Face `tokenizer.json`), every document framed
by the checkpoint's BOS and EOS ids and concatenated, and `sample(rng, size)` returns the window
of `size` tokens (its targets the next `size`) at a window index drawn from `rng`: windows of
one length tile the stream, so the size knob is the packed length (`train_sizes='4096'`, the
paper's). The corpus' tokens live in a cache (`cache_dir`, keyed by the files, the tokenizer and
the framing), memory-mapped by every process; `python -m tasks.text --tokenizer=... FILES`
builds it ahead of a large run.

Files: `.txt` (one document each) or `.jsonl`, one record a line: {"text"} (every token is
scored), or a prompt and its answer ({"prompt", "completion"} or {"question", "answer"}): the
loss mask then marks only the answer's tokens (the positions whose target is one).

Token ids are the checkpoint's + 1: id 0 stays padding (`model/llama.py`); `vocab_size` is the
model's (the checkpoint's `vocab_size` + 1), which may exceed the tokenizer's. Annotations: no
complexity (zeros) and no features.
"""

from __future__ import annotations

import argparse
import functools
import glob
import hashlib
import json
import pathlib

import numpy as np

from tasks import base

CACHE_VERSION = 1


def _tokenizers():
  try:
    import tokenizers  # the `llm` extra: pip install -e '.[llm]'
  except ImportError as e:
    raise ImportError("the text task needs the 'tokenizers' package: "
                      "pip install -e '.[llm]'") from e
  return tokenizers


class Tokenizer:
  """A `tokenizer.json` in our ids (the file's + 1); `path` is the file or its directory."""

  def __init__(self, path: str | pathlib.Path):
    path = pathlib.Path(path)
    self.path = path / 'tokenizer.json' if path.is_dir() else path
    if not self.path.exists():
      raise ValueError(f'no tokenizer at {self.path}')
    self._tok = _tokenizers().Tokenizer.from_file(str(self.path))

  @property
  def size(self) -> int:
    """Our ids 0..size-1: padding plus the file's vocabulary."""
    return self._tok.get_vocab_size(with_added_tokens=True) + 1

  def encode(self, text: str) -> np.ndarray:
    """Our ids of `text` (no special tokens added)."""
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32) + 1

  def decode(self, ids) -> str:
    """Text of our ids; padding and ids the file lacks are skipped."""
    hf = [int(i) - 1 for i in ids if 0 < int(i) < self.size]
    return self._tok.decode(hf, skip_special_tokens=False)

  def token_id(self, token: str) -> int:
    """Our id of a token string (e.g. '</s>'), or -1."""
    hf = self._tok.token_to_id(token)
    return -1 if hf is None else hf + 1

  def digest(self) -> str:
    return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]


def _documents(file: pathlib.Path):
  """(prompt, answer) pairs of a file; prompt '' and every token scored for plain text."""
  if file.suffix == '.jsonl':
    for line in file.read_text().splitlines():
      if not line.strip():
        continue
      record = json.loads(line)
      for prompt, answer in (('prompt', 'completion'), ('question', 'answer')):
        if prompt in record and answer in record:
          yield record[prompt], record[answer]
          break
      else:
        if 'text' not in record:
          raise ValueError(f'{file}: a record needs "text", "prompt"+"completion" or '
                           f'"question"+"answer"; got {sorted(record)}')
        yield None, record['text']
  else:
    yield None, file.read_text()


def tokenize_corpus(files: list[pathlib.Path], tokenizer: Tokenizer, bos: int,
                    eos: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [N] int32 in our ids, scored [N] bool: the token is an answer token)."""
  tokens, scored = [], []

  def add(ids, score):
    tokens.append(np.asarray(ids, np.int32))
    scored.append(np.full(len(ids), score, bool))

  for file in files:
    for prompt, answer in _documents(file):
      if bos > 0:
        add([bos], False)
      if prompt is None:
        add(tokenizer.encode(answer), True)
      else:
        # The answer is tokenized on its own, so its tokens are exactly what a generator writes
        # after the prompt; a separating space belongs to the prompt's end.
        add(tokenizer.encode(prompt), False)
        add(tokenizer.encode(answer), True)
      if eos > 0:
        add([eos], True)  # predicting the end of a document is part of the answer
  if not tokens:
    raise ValueError(f'no documents in {[str(f) for f in files]}')
  return np.concatenate(tokens), np.concatenate(scored)


def resolve_files(files: str) -> list[pathlib.Path]:
  """Comma-separated paths or globs -> the files, sorted within each entry."""
  found = []
  for pattern in filter(None, (p.strip() for p in files.split(','))):
    matches = sorted(glob.glob(pattern)) or []
    if not matches:
      raise ValueError(f'no text files match {pattern!r}')
    found.extend(pathlib.Path(m) for m in matches)
  return found


def default_cache_dir() -> pathlib.Path:
  return pathlib.Path.home() / '.cache' / 'anira_jax' / 'text'


class TextTask(base.Task):
  """Windows of a packed, tokenized local corpus; size = window length in tokens."""

  name = 'text'

  def __init__(self, tokenizer: str = '', files: str = '', vocab_size: int = 0, bos_id: int = -1,
               eos_id: int = -1, cache_dir: str = ''):
    """`tokenizer`: a tokenizer.json or the checkpoint directory holding one; `files`: text or
    JSONL paths/globs, comma-separated; `vocab_size`: ours (0 = the tokenizer's + 1);
    `bos_id`/`eos_id`: the checkpoint's ids framing each document (-1 = none)."""
    if not tokenizer or not files:
      raise ValueError('the text task needs options tokenizer=PATH and files=PATHS')
    self.tokenizer = Tokenizer(tokenizer)
    self.files = resolve_files(files)
    self._vocab_size = vocab_size or self.tokenizer.size
    if self._vocab_size < self.tokenizer.size:
      raise ValueError(f'vocab_size={vocab_size} is smaller than the tokenizer\'s '
                       f'{self.tokenizer.size} ids (+1 for padding)')
    # Our ids: the checkpoint's + 1.
    self.bos, self.eos = (i + 1 if i >= 0 else -1 for i in (bos_id, eos_id))
    self.cache_dir = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()

  @property
  def vocab_size(self) -> int:
    return self._vocab_size

  @functools.cached_property
  def vocab(self) -> tuple[str, ...]:
    names = ['<pad>'] + [self.tokenizer._tok.id_to_token(i) or f'<unused {i}>'
                         for i in range(self.vocab_size - 1)]
    return tuple(names)

  def cache_path(self) -> pathlib.Path:
    key = json.dumps([CACHE_VERSION, self.tokenizer.digest(), self.bos, self.eos,
                      [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns)
                       for f in self.files]])
    return self.cache_dir / f'corpus-{hashlib.sha256(key.encode()).hexdigest()[:20]}'

  @functools.cached_property
  def corpus(self) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, scored), memory-mapped from the cache; tokenized on first use."""
    path = self.cache_path()
    if not (path / 'scored.npy').exists():
      tokens, scored = tokenize_corpus(self.files, self.tokenizer, self.bos, self.eos)
      path.mkdir(parents=True, exist_ok=True)
      # Written under temporary names and renamed: a reader never sees half a file.
      for name, array in (('tokens', tokens), ('scored', scored)):
        np.save(path / f'{name}.tmp.npy', array)
        (path / f'{name}.tmp.npy').rename(path / f'{name}.npy')
    return (np.load(path / 'tokens.npy', mmap_mode='r'),
            np.load(path / 'scored.npy', mmap_mode='r'))

  def windows(self, size: int) -> int:
    """How many windows of `size` tokens (plus the target after the last) the corpus has."""
    return (len(self.corpus[0]) - 1) // size

  def valid_sizes(self) -> tuple[int, int]:
    return 2, 10**9

  def seq_len(self, max_size: int) -> int:
    return max_size

  def sample(self, rng: np.random.Generator, size: int) -> base.Example:
    tokens, scored = self.corpus
    count = self.windows(size)
    if count < 1:
      raise ValueError(f'the corpus has {len(tokens)} tokens: too few for one window of {size}')
    start = int(rng.integers(count)) * size
    window = np.asarray(tokens[start:start + size + 1], np.int32)
    return base.Example(
        tokens=window[:-1], targets=window[1:],
        loss_mask=np.asarray(scored[start + 1:start + size + 1], bool),
        complexity=np.zeros(size, np.float32), features={})


def train_tokenizer(texts: list[str], vocab_size: int, path: str | pathlib.Path,
                    specials: tuple[str, ...] = ('<unk>', '<s>', '</s>')) -> Tokenizer:
  """A small SentencePiece-style BPE (Metaspace) trained on `texts` and saved at `path`: for
  tests and the `:tiny` experiment, which have no downloaded tokenizer."""
  tk = _tokenizers()
  tokenizer = tk.Tokenizer(tk.models.BPE(unk_token=specials[0]))
  tokenizer.pre_tokenizer = tk.pre_tokenizers.Metaspace()
  tokenizer.decoder = tk.decoders.Metaspace()
  trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                   show_progress=False)
  tokenizer.train_from_iterator(texts, trainer)
  tokenizer.save(str(path))
  return Tokenizer(path)


def main(argv=None):
  parser = argparse.ArgumentParser(description='Tokenize a corpus into the text task\'s cache.')
  parser.add_argument('files', help='text or JSONL paths or globs, comma-separated')
  parser.add_argument('--tokenizer', required=True, help='tokenizer.json or its directory')
  parser.add_argument('--bos_id', type=int, default=-1)
  parser.add_argument('--eos_id', type=int, default=-1)
  parser.add_argument('--cache_dir', default='')
  args = parser.parse_args(argv)
  task = TextTask(args.tokenizer, args.files, bos_id=args.bos_id, eos_id=args.eos_id,
                  cache_dir=args.cache_dir)
  tokens, scored = task.corpus
  print(f'{len(tokens):,} tokens ({int(np.sum(scored)):,} scored) in {task.cache_path()}')


if __name__ == '__main__':
  main()
