"""The learned router: a Flax Q-network trained with Double DQN against the jitted serving env.

  config.py     DQNConfig / TrainConfig: the typed, validated learner and run configs
  qnetwork.py   the MLP Q-network and its observation normalisation
  losses.py     Double Q-learning targets, Huber loss, n-step returns (rlax-style functions)
  replay.py     a per-environment ring buffer that lives in JAX (pytree), n-step sampling
  dqn.py        make_train(dqn, train, env, params): init / chunk / evaluate, jit(vmap) over seeds
  checkpoint.py orbax checkpoints holding the learner state and the full config
  policy.py     LearnedPolicy: the greedy router behind the common policy interface

Training runs, workdirs and evaluations are the experiment layer's (`bes/experiment/`).
"""
