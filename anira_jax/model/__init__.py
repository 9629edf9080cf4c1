"""The network: layers and the recurrent Transformer's pure functions."""

from anira_jax.model.network import Network

__all__ = ['Network']
