"""The held-out protocol: a trained router against the tuned heuristics and the clairvoyant
bounds on workload families it never trained on (`configs/heldout.py`, `launch/heldout.py`).

For each family (overrides of the workdir's saved config, after the protocol's `scoring`
overrides, which every family shares) and each evaluation seed s (the
request stream of key 1000 + s), every policy runs one recorded episode on the same
requests: the learned router (each training seed; their mean is the seed's value), the
heuristics tuned on the training workload (`workdir/heuristics.json`), the clairvoyant greedy
(its knobs tuned with true lengths on the same training workload, `tune_clairvoyant`) and the
lookahead of each horizon (`bes.clairvoyant`, over that greedy). Per family and policy
the result holds the per-seed mean utility and availability, their means with 95% Student-t
intervals over seeds, the peak, the best heuristic (highest mean utility) and the learned
router's paired difference to it (same requests, so the interval of the per-seed
differences). Each finished family is saved as `<out>/families/<name>.json`; a rerun with the
same workdir and protocol skips it (an interrupted run resumes).
"""
from __future__ import annotations

import json
import os
from typing import Callable

import jax
import numpy as np

from bes import clairvoyant, config_cli, heuristics, io_util, metrics
from bes.experiment import evaluate as evaluate_lib
from bes.experiment import workdir as workdir_lib
from bes.experiment.setup import Setup

_FAMILY_KEYS = {"held_out", "about", "overrides"}
MINIMUMS = {"seeds": 2, "num_requests": 1}   # of the protocol's counts (seeds: an interval needs 2)


def load_protocol(path: str) -> dict:
  """`get_protocol()` of a protocol file, checked; errors name the file and the field."""
  p = config_cli.load_file_function(path, "get_protocol", "--protocol")
  where = f"--protocol {path}"
  if not isinstance(p, dict) or not isinstance(p.get("families"), dict) or not p["families"]:
    raise ValueError(f"{where}: get_protocol() must return a dict with a non-empty 'families' dict")
  for name, fam in p["families"].items():
    if not isinstance(fam, dict) or set(fam) != _FAMILY_KEYS:
      raise ValueError(f"{where}: families[{name!r}] must have exactly the keys "
                       f"{sorted(_FAMILY_KEYS)}, got {sorted(fam) if isinstance(fam, dict) else fam!r}")
    if not isinstance(fam["overrides"], dict):
      raise ValueError(f"{where}: families[{name!r}].overrides must be a dict of config keys")
  for field, low in MINIMUMS.items():
    if not isinstance(p.get(field), int) or p[field] < low:
      raise ValueError(f"{where}: {field} must be an integer >= {low}, got {p.get(field)!r}")
  if not isinstance(p.get("scoring", {}), dict):
    raise ValueError(f"{where}: scoring must be a dict of config keys (applied to every family)")
  horizons = p.get("horizons", ())
  if not all(isinstance(h, int) and h >= 0 for h in horizons):
    raise ValueError(f"{where}: horizons must be integers >= 0, got {horizons!r}")
  return dict(p, horizons=tuple(horizons), scoring=dict(p.get("scoring", {})))


def tune_clairvoyant(workdir: str, log: Callable[[str], None] = print) -> dict:
  """The clairvoyant greedy's knobs (slack, turnover, dump), grid-searched with its true
  lengths on the workdir's training workload exactly as the greedy's were
  (`workdir.tune_heuristics`: same grid, key and episodes), never on a held-out family."""
  setup = Setup.from_config(workdir_lib.saved_config(workdir))
  env, params = setup.env()
  score_params, where = workdir_lib.tuning_distribution(setup)
  log(f"tuning the clairvoyant greedy on {where} (true lengths)")
  policy, _ = heuristics.tune_deadline_greedy(env, params, jax.random.PRNGKey(setup.seed + 2),
                                              wrap=clairvoyant.ClairvoyantGreedy,
                                              score_params=score_params)
  knobs = {k: float(getattr(policy.base, k)) for k in ("slack", "turnover", "dump")}
  log(f"tuned clairvoyant greedy: {heuristics.format_knobs(knobs)}")
  return knobs


def run_family(workdir: str, name: str, family: dict, protocol: dict, knobs: dict,
               log: Callable[[str], None] = print) -> dict:
  """Every policy on `protocol['seeds']` request streams of one family (`knobs`: the
  clairvoyant greedy's, `tune_clairvoyant`); the raw per-seed values (`summarize_family`
  adds the statistics)."""
  overrides = {**protocol.get("scoring", {}), **family["overrides"]}
  setup = Setup.from_config(workdir_lib.saved_config(workdir, overrides))
  learned = workdir_lib.load_policies(workdir)
  n = evaluate_lib.num_requests(setup, protocol["num_requests"])
  env, params = setup.env(episode_len=n, record=True)
  named = dict(workdir_lib.heuristic_policies(workdir, params))
  if "deadline_greedy" not in named:
    raise ValueError(f"{workdir}: no tuned deadline_greedy in {workdir_lib.HEURISTICS_FILE} "
                     "(the clairvoyant policies build on it); train with "
                     "config.train.tune_heuristics=True")
  greedy = clairvoyant.ClairvoyantGreedy(named["deadline_greedy"].replace(
      **{k: np.float32(v) for k, v in knobs.items()}))
  named["clairvoyant_greedy"] = greedy
  values: dict[str, dict[str, list]] = {}

  def record(policy, summary):
    v = values.setdefault(policy, {"utility": [], "availability": []})
    v["utility"].append(summary["mean_utility"])
    v["availability"].append(summary["availability"])

  peaks = []
  for s in range(protocol["seeds"]):
    key = jax.random.PRNGKey(1000 + s)
    # the learned router (its entry: the mean over its seeds) and `named`, as evaluate.py runs them
    result, _ = evaluate_lib.evaluate(setup, n, key, named, learned, log=lambda _: None)
    for policy, summary in result["policies"].items():
      record(policy, summary)
    peaks.append(result["peak"])
    for h in protocol["horizons"]:
      outcomes, _ = clairvoyant.run_lookahead_episode(env, params, greedy, key, h,
                                                      chunk=setup.simulate.chunk)
      record(f"clairvoyant_lookahead{h}",
             metrics.summarize(outcomes, setup.profile, window_s=setup.simulate.window_s))
    log(f"  {name} seed {s}: " + ", ".join(f"{p} {v['utility'][-1]:.4f}"
                                          for p, v in values.items()))
  return dict(name=name, about=family["about"], held_out=family["held_out"],
              overrides=family["overrides"], num_requests=n, seeds=protocol["seeds"],
              peak=float(np.mean(peaks)), values=values)


def summarize_family(raw: dict) -> dict:
  """`raw` plus per policy `utility` / `availability` (mean, 95% half-width), the best
  heuristic and the learned router's paired utility difference to it (mean, half-width)."""
  stats = {p: {k: metrics.mean_ci(v[k]) for k in ("utility", "availability")}
           for p, v in raw["values"].items()}
  tuned = [p for p in raw["values"] if p in heuristics.HEURISTICS]
  best = max(tuned, key=lambda p: stats[p]["utility"][0])
  diff = np.subtract(raw["values"]["learned"]["utility"], raw["values"][best]["utility"])
  clair = [p for p in raw["values"] if p.startswith("clairvoyant")]
  return dict(raw, stats=stats, best_heuristic=best,
              learned_minus_best=metrics.mean_ci(diff),
              best_clairvoyant=max(clair, key=lambda p: stats[p]["utility"][0]))


def run(workdir: str, protocol: dict, out: str, families=None,
        log: Callable[[str], None] = print) -> list[dict]:
  """Every family (or those named in `families`), resumably; returns the summaries."""
  names = list(families or protocol["families"])
  unknown = [f for f in names if f not in protocol["families"]]
  if unknown:
    raise ValueError(f"--families: unknown {unknown}; the protocol has "
                     f"{list(protocol['families'])}")
  stamp = dict(workdir=os.path.abspath(workdir), seeds=protocol["seeds"],
               num_requests=protocol["num_requests"], horizons=list(protocol["horizons"]),
               scoring=protocol.get("scoring", {}))
  os.makedirs(os.path.join(out, "families"), exist_ok=True)
  knobs_path = os.path.join(out, "clairvoyant_knobs.json")
  if os.path.exists(knobs_path):
    with open(knobs_path) as f:
      saved = json.load(f)
    knobs = saved["knobs"] if saved.get("workdir") == stamp["workdir"] else None
  else:
    knobs = None
  if knobs is None:
    knobs = tune_clairvoyant(workdir, log)
    io_util.atomic_write_text(knobs_path, json.dumps(dict(workdir=stamp["workdir"], knobs=knobs)))
  stamp["clairvoyant_knobs"] = knobs
  done = []
  for name in names:
    path = os.path.join(out, "families", f"{name}.json")
    family = protocol["families"][name]
    if os.path.exists(path):
      with open(path) as f:
        saved = json.load(f)
      if saved.get("stamp") == stamp and saved.get("overrides") == family["overrides"]:
        log(f"{name}: done before ({path}), skipped")
        done.append(summarize_family(saved))
        continue
    log(f"{name}: {family['about']}")
    raw = dict(run_family(workdir, name, family, protocol, knobs, log), stamp=stamp)
    io_util.atomic_write_text(path, json.dumps(raw, indent=1))
    done.append(summarize_family(raw))
  return done


def against_targets(summaries: list[dict]) -> dict:
  """The learned router against issue 11's targets over the held-out families: on how many
  its mean utility >= the best heuristic's, the mean relative difference (target >= +2%),
  and where the best heuristic reaches 0.99 availability, whether the router does too."""
  held = [s for s in summaries if s["held_out"]]
  rel = [s["learned_minus_best"][0] / s["stats"][s["best_heuristic"]]["utility"][0]
         for s in held]
  avail = [(s["name"], s["stats"]["learned"]["availability"][0]) for s in held
           if s["stats"][s["best_heuristic"]]["availability"][0] >= 0.99]
  return dict(families=len(held), at_least_best=sum(s["learned_minus_best"][0] >= 0 for s in held),
              mean_relative=float(np.mean(rel)) if rel else None,
              availability_where_best_reaches_099=avail)


def _cell(stat) -> str:
  mean, half = stat
  return f"{mean:.3f}" if np.isnan(half) else f"{mean:.3f} ± {half:.3f}"


def format_markdown(summaries: list[dict], command: str) -> str:
  """The headroom table (mean utility ± 95% interval over seeds) and the availability one."""
  policies = []
  for s in summaries:
    policies += [p for p in s["stats"] if p not in policies]
  head = ["family", "held out", "peak"] + policies + ["learned − best heuristic"]
  lines = [f"`{command}`", "", "Mean utility per request, mean ± 95% interval over "
           f"{summaries[0]['seeds']} evaluation seeds ({summaries[0]['num_requests']} requests "
           "each; every policy on the same requests):", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for s in summaries:
    cells = [s["name"], "yes" if s["held_out"] else "no (training)", f"{s['peak']:.3f}"]
    cells += [_cell(s["stats"][p]["utility"]) if p in s["stats"] else "-" for p in policies]
    cells.append(_cell(s["learned_minus_best"]) + f" (vs {s['best_heuristic']})")
    lines.append("| " + " | ".join(cells) + " |")
  t = against_targets(summaries)
  if t["families"]:
    lines += ["", f"Against the targets: learned >= the best heuristic on {t['at_least_best']} of "
              f"{t['families']} held-out families; mean relative difference "
              f"{100 * t['mean_relative']:+.1f}% (target >= +2%); availability where the best "
              "heuristic reaches 0.99: " + (", ".join(f"{n} {a:.3f}" for n, a in
                                                    t["availability_where_best_reaches_099"])
                                            or "none") + "."]
  lines += ["", "Availability (fraction of requests on time), mean ± 95% interval:", "",
            "| " + " | ".join(["family"] + policies) + " |", "|" + "---|" * (len(policies) + 1)]
  for s in summaries:
    cells = [s["name"]] + [_cell(s["stats"][p]["availability"]) if p in s["stats"] else "-"
                           for p in policies]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def format_routes(results: dict[str, list[dict]], command: str) -> str:
  """One row per route (a held-out run's summaries): the learned router's paired difference
  to the best heuristic per family, and the targets line's figures."""
  names = []
  for summaries in results.values():
    names += [s["name"] for s in summaries if s["name"] not in names]
  head = ["route"] + names + ["held-out >= best", "mean rel. diff"]
  lines = [f"`{command}`", "", "Learned mean utility minus the best tuned heuristic's "
           "(paired over the same requests; mean ± 95% interval over seeds):", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for route, summaries in results.items():
    by = {s["name"]: s for s in summaries}
    t = against_targets(summaries)
    rel = "-" if t["mean_relative"] is None else f"{100 * t['mean_relative']:+.1f}%"
    lines.append("| " + " | ".join([route] + [_cell(by[n]["learned_minus_best"]) if n in by else "-"
                                             for n in names]
                                  + [f"{t['at_least_best']} / {t['families']}", rel]) + " |")
  return "\n".join(lines) + "\n"
