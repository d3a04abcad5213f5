"""Prompt and output lengths: clipped, rounded lognormals fitted to the Azure conv trace.

The fit (`fit_lognormal_lengths`) is the maximum-likelihood lognormal: mu and sigma are the
mean and the (population, ddof=0) standard deviation of the natural log of the lengths. On
`bes/data/traces/azure_llm_2023_conv.csv` (19,366 requests, no task labels) it gives

  prompt tokens: mu = 6.6333, sigma = 0.9852   (median exp(mu) ~ 760 tokens)
  output tokens: mu = 5.0190, sigma = 0.8590   (median ~ 151 tokens)

reproduced by `tests/test_workloads.py::test_azure_conv_fit_matches_trace`. The trace has no
tasks, so every task shares these parameters (`LengthModel.azure_conv`); per-task values can be
passed to `LengthModel.create`.

Default clips (`max_prompt_len=1536`, `max_output_len=512`) keep prompt + output within OPT's
2048 positions; under the fitted law they clip about 24% of prompts and 8% of outputs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

AZURE_CONV_PROMPT = (6.6333, 0.9852)  # (mu, sigma) of log prompt tokens.
AZURE_CONV_OUTPUT = (5.0190, 0.8590)  # (mu, sigma) of log output tokens.
DEFAULT_MAX_PROMPT_LEN = 1536
DEFAULT_MAX_OUTPUT_LEN = 512


def fit_lognormal_lengths(prompt_len, output_len) -> dict[str, float]:
  """Maximum-likelihood lognormal fit of prompt and output lengths (tokens, all >= 1).

  Returns:
    {'prompt_mu', 'prompt_sigma', 'output_mu', 'output_sigma'}: mean and population standard
    deviation of log(tokens).
  """
  out = {}
  for name, x in (("prompt", prompt_len), ("output", output_len)):
    x = np.asarray(x, np.float64)
    if x.size == 0 or np.any(x < 1):
      raise ValueError(f"fit_lognormal_lengths: {name} lengths must be non-empty and >= 1")
    logs = np.log(x)
    out[f"{name}_mu"] = float(logs.mean())
    out[f"{name}_sigma"] = float(logs.std())
  return out


@struct.dataclass
class LengthModel:
  """Per-task lognormal lengths, rounded to integers and clipped to [1, max].

  Attributes:
    prompt_mu, prompt_sigma: float32 [T], lognormal parameters of prompt tokens.
    output_mu, output_sigma: float32 [T], lognormal parameters of output tokens.
    max_prompt_len, max_output_len: clip bounds in tokens (static).
  """
  prompt_mu: jnp.ndarray
  prompt_sigma: jnp.ndarray
  output_mu: jnp.ndarray
  output_sigma: jnp.ndarray
  max_prompt_len: int = struct.field(pytree_node=False, default=DEFAULT_MAX_PROMPT_LEN)
  max_output_len: int = struct.field(pytree_node=False, default=DEFAULT_MAX_OUTPUT_LEN)

  @classmethod
  def create(cls, num_tasks: int, prompt=AZURE_CONV_PROMPT, output=AZURE_CONV_OUTPUT,
             max_prompt_len: int = DEFAULT_MAX_PROMPT_LEN,
             max_output_len: int = DEFAULT_MAX_OUTPUT_LEN, where: str = "lengths") -> "LengthModel":
    """Validated model. `prompt`, `output`: (mu, sigma), each a number or [num_tasks] array."""
    fields = {}
    for name, (mu, sigma) in (("prompt", prompt), ("output", output)):
      mu = np.broadcast_to(np.asarray(mu, np.float64), (num_tasks,))
      sigma = np.broadcast_to(np.asarray(sigma, np.float64), (num_tasks,))
      if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma)) and np.all(sigma >= 0)):
        raise ValueError(f"{where}: {name} mu must be finite and sigma >= 0, got {mu}, {sigma}")
      fields[f"{name}_mu"] = jnp.asarray(mu, jnp.float32)
      fields[f"{name}_sigma"] = jnp.asarray(sigma, jnp.float32)
    for name, value in (("max_prompt_len", max_prompt_len), ("max_output_len", max_output_len)):
      if int(value) != value or value < 1:
        raise ValueError(f"{where}: {name} must be an integer >= 1 tokens, got {value!r}")
    return cls(**fields, max_prompt_len=int(max_prompt_len), max_output_len=int(max_output_len))

  @classmethod
  def azure_conv(cls, num_tasks: int, max_prompt_len: int = DEFAULT_MAX_PROMPT_LEN,
                 max_output_len: int = DEFAULT_MAX_OUTPUT_LEN) -> "LengthModel":
    """The Azure conv fit (module docstring), shared by all `num_tasks` tasks."""
    return cls.create(num_tasks, AZURE_CONV_PROMPT, AZURE_CONV_OUTPUT, max_prompt_len,
                      max_output_len)

  def from_uniforms(self, u, task) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(prompt_len, output_len), int32 scalar tokens for `task`, from uniforms u [2] in (0, 1)."""
    return self.from_normals(jax.scipy.special.ndtri(u), task)

  def draw(self, key: jax.Array, task) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Draws (prompt_len, output_len), int32 scalars in tokens, for one request of `task`."""
    return self.from_normals(jax.random.normal(key, (2,), jnp.float32), task)

  def from_normals(self, z, task) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(prompt_len, output_len) from standard normals z [2]."""
    prompt = jnp.exp(self.prompt_mu[task] + self.prompt_sigma[task] * z[0])
    output = jnp.exp(self.output_mu[task] + self.output_sigma[task] * z[1])
    prompt = jnp.clip(jnp.rint(prompt), 1.0, float(self.max_prompt_len)).astype(jnp.int32)
    output = jnp.clip(jnp.rint(output), 1.0, float(self.max_output_len)).astype(jnp.int32)
    return prompt, output
