"""anira_jax: token-level adaptive computation in recurrent Transformers, in JAX."""

__version__ = '0.1.0'
