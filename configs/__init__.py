"""Config files for the launchers' `--config` flag (`ml_collections` files with `get_config()`).

`default.py` is the default of every launcher; another config starts from it
(`from configs import default`) and changes keys, as `experiments.py` does. `sweeps/` holds
the sweep files of `launch/sweep.py`. An installed package (setup.py), so config files
import each other without path editing.
"""
