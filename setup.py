"""bes: learned best-effort LLM serving in JAX."""
import setuptools

setuptools.setup(
    name="bes",
    version="0.1.0",
    description="Learned best-effort LLM serving: a jitted serving simulator, "
    "a learned router and Flax OPT engines.",
    python_requires=">=3.10",
    # configs and launch are packages too: `python -m launch.train` and config files that
    # import each other (`from configs import default`) work without path editing.
    packages=setuptools.find_packages(
        include=["bes", "bes.*", "configs", "configs.*", "launch", "launch.*"]),
    package_data={"bes": ["data/*", "data/*/*"]},
    include_package_data=True,
    install_requires=[
        "jax>=0.7,<0.11",
        "flax>=0.11,<0.13",
        "optax>=0.2.4,<0.3",
        "chex>=0.1.89,<0.2",
        "numpy>=1.26,<3",
        "scipy>=1.11",           # bes.metrics.mean_ci (t intervals); jax needs it too
        "absl-py>=2.1,<3",
        "ml_collections>=1.0,<2",
        "orbax-checkpoint>=0.11,<0.13",
        "matplotlib>=3.8,<4",
        "safetensors>=0.4,<1",
        "transformers>=4.45,<6",
        "tokenizers>=0.20,<1",   # bes.serving.tokenizer (the trained BPE)
        "httpx>=0.27,<1",        # bes.serving.loadgen
        "tqdm>=4.60,<5",         # launch/loadgen.py's progress bar
        # the serving runtime (bes/serving): HTTP API, server, metrics
        "fastapi>=0.110,<1",
        "uvicorn>=0.29,<1",
        "pydantic>=2.5,<3",
        "prometheus_client>=0.20,<1",
        "psutil>=5.9,<8",        # launch/soak.py: memory of the server and its workers
    ],
    extras_require={
        # torch is the conformance oracle only: the package itself never imports it.
        "test": ["pytest>=8", "torch==2.13.0", "openai>=1.30,<4"],
    },
)
