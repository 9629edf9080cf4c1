"""The malloc settings of `anira_jax.host_memory`, each checked in a fresh process (they must be
applied before anything allocates from the threads JAX starts)."""

import subprocess
import sys

import pytest

from anira_jax import host_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc only')

# Frees a 256 MB array, then allocates and frees it three more times; prints the page faults
# those three cost (ru_minflt). glibc's default hands such a block back to the kernel each time.
_REALLOCATE = '''
import resource, sys
from anira_jax import host_memory
ok = host_memory.reuse_freed_memory(sys.argv[1])
import numpy as np
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(2**25).sum()
before = faults()
for _ in range(3):
  np.ones(2**25).sum()
print(ok, faults() - before)
'''


def _reallocation_faults(mode: str) -> tuple[str, int]:
  out = subprocess.run([sys.executable, '-c', _REALLOCATE, mode], capture_output=True, text=True,
                       check=True)
  ok, faults = out.stdout.split()
  return ok, int(faults)


def test_freed_memory_is_reused_without_new_page_faults():
  ok, faults = _reallocation_faults('default')
  assert ok == 'False' and faults > 100, 'the reference (malloc untouched) should fault: ' \
      f'{faults} faults; this test cannot tell the modes apart here'
  for mode in ('keep', 'single_arena'):
    ok, faults = _reallocation_faults(mode)
    assert ok == 'True' and faults < 10, (mode, faults)


@pytest.mark.parametrize('mode', ['keep', 'single_arena'])
def test_jax_runs_after_the_settings(mode):
  code = ('from anira_jax import host_memory\n'
          f'assert host_memory.reuse_freed_memory({mode!r})\n'
          'import jax.numpy as jnp\n'
          'print(float(jnp.ones((512, 512)).sum()))\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == '262144.0'


def test_an_unknown_mode_is_refused():
  with pytest.raises(ValueError, match='single_arena'):
    host_memory.reuse_freed_memory('jemalloc')
  assert not host_memory.reuse_freed_memory('default')
