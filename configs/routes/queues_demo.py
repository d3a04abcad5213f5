"""Route (b), learning from the heuristic, on top of route (a): 80% of the exploratory
actions are the deadline-aware greedy's (`dqn.demo`), so the replay starts with the
heuristic's transitions and Q-learning starts where the heuristic is (DQfD-style
demonstrations, without DQfD's margin loss).

  python launch/train.py --config=configs/routes/queues_demo.py --workdir=runs/route_queues_demo
  python launch/heldout.py --workdir=runs/route_queues_demo --out=results/heldout/queues_demo
"""
from configs.routes import queues


def get_config():
  config = queues.get_config()
  config.dqn.demo = "deadline_greedy"
  config.dqn.demo_frac = 0.8
  return config
