"""zel_jax: zero-shot entity linking in JAX/Flax."""

__version__ = "0.1.0"
