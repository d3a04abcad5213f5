"""Sweep files for `launch/sweep.py`: `configs/sweeps/<name>.py` defines `get_sweep()`.

`get_sweep()` returns an `ml_collections.ConfigDict` with the fields
  base: the config file the steps take as `{base}` (a path relative to the repo root).
  grid: the points, a list of {'config.a.b': value} built with `bes.sweep` (sweep, product,
    zipit). Each point has the directory `OUT/points/<point_name>/` (its `{point_dir}`).
  steps: launcher command templates run in order for each point, as
    `sys.executable TEMPLATE...` from the repo root. A step is a string or
    dict(cmd=..., name='step<i>', overrides=None). Placeholders: {base}, {out} (the sweep's
    --out), {point_dir}, {step_dir} (the step's own directory), {steps[NAME]} (an earlier
    step's {step_dir}), and the word {overrides}: the point's `--config.a.b=value` flags,
    all of them or only the keys listed in the step's `overrides` field. A step without
    the {overrides} word takes no overrides.
  metrics_from: path template of the metrics.json that holds the point's row, e.g.
    '{point_dir}/metrics.json' (launchers' shared format: {"peak", "policies": {...}}).
  plot: dict(x=<a grid key, e.g. 'config.workload.rate'>, y=<metric>, log_x=bool,
    series=[policy names] or [] for all).
  table (optional): the metrics of table.md (default `bes.sweep.HEADLINE`).

Shared steps. A step that uses {point_dir} (or an earlier per-point step's directory) is
per point: its {step_dir} is the point's directory. Any other step depends on the point only
through its overrides (and the steps it names), so it runs once per distinct value of those
keys, in `OUT/shared/<step name>/<point_name(those keys)>/`, and the points share it. Train
once per seed and evaluate the trained workdir at many rates:

  s.grid = product([sweep('config.seed', [0, 1, 2]),
                    sweep('config.workload.rate', [4, 16, 64])])
  s.steps = [
      dict(name='train', overrides=['config.seed'],
           cmd='launch/train.py --config={base} --workdir={step_dir} {overrides}'),
      dict(name='evaluate', overrides=['config.workload.rate'],
           cmd='launch/evaluate.py --workdir={steps[train]} --out={point_dir} {overrides}')]
  s.metrics_from = '{point_dir}/metrics.json'

`static_rates.py` is a complete example.
"""
