"""bes: learned best-effort LLM serving in JAX."""
__version__ = "0.1.0"
