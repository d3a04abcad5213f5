"""The launchers: absl mains that parse flags and call into `bes`.

Run one as a script or as a module from the repository root (after `pip install -e .`):

  python launch/train.py --workdir=runs/router
  python -m launch.train --workdir=runs/router

Both work without any `sys.path` editing: `bes`, `configs` and `launch` are installed
packages (setup.py). Every launcher takes `--help`; those with a `--config` flag also take
`--config_help` (every config key, its value and its meaning).
"""
