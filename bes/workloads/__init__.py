"""Jittable request streams: Poisson, bursty (MAF-style) and trace replay.

Every workload is a `flax.struct.dataclass` with `init(key) -> state` and
`next(key, state) -> (Requests of scalars, state)`, both pure and jittable; `sample` draws
many. Build them from configs with `workload_from_config`.
"""
from bes.workloads.base import Elapsed, sample
from bes.workloads.bursty import BurstyWorkload, fit_bursty_params
from bes.workloads.config import default_workload_config, workload_from_config
from bes.workloads.lengths import LengthModel, fit_lognormal_lengths
from bes.workloads.mix import TaskMix
from bes.workloads.poisson import PoissonWorkload
from bes.workloads.trace import (TraceData, TraceWorkload, load_trace_csv, scale_to_rate,
                                 trace_requests)

__all__ = [
    "BurstyWorkload", "Elapsed", "LengthModel", "PoissonWorkload", "TaskMix", "TraceData",
    "TraceWorkload", "default_workload_config", "fit_bursty_params", "fit_lognormal_lengths",
    "load_trace_csv", "sample", "scale_to_rate", "trace_requests", "workload_from_config",
]
