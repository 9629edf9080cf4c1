"""The network: layers and the recurrent Transformer's pure functions, one class per model
family (`ModelConfig.family`)."""

from anira_jax.model.config import ModelConfig
from anira_jax.model.llama import LlamaNetwork
from anira_jax.model.network import Network

FAMILIES: dict[str, type[Network]] = {'anira': Network, 'llama': LlamaNetwork}


def make_network(cfg: ModelConfig) -> Network:
  """The network of `cfg.family`."""
  return FAMILIES[cfg.family](cfg)


__all__ = ['FAMILIES', 'LlamaNetwork', 'Network', 'make_network']
