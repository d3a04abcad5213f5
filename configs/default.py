"""The default configuration: the built-in 4-GPU OPT profile under a bursty workload, and the
best learned router found on the held-out protocol (issue 11; results/README.md, "Held-out
protocol"): Double DQN that observes what the deadline-aware greedy computes (features
'predict'), learns from its demonstrations (demo), and chooses among the models it predicts
on time, freely when none is (action_mask). `configs/paper.py` is the paper's router, the
default before.

Use with any launcher: `--config=configs/default.py`, and override any key from the
command line, e.g. `--config.workload.rate=40 --config.env.reward=soft`.
"""
import ml_collections

from bes.workloads import default_workload_config


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Profile JSON path; '' = the built-in default (bes/data/profiles/opt_a100_roofline.json:
  # OPT-125M x1, OPT-1.3B x1, OPT-6.7B x2 on A100-80GB, roofline latencies, measured quality).
  config.profile = ""

  # Request stream (keys: bes/workloads/config.py). Default: MAF-style bursty arrivals at a
  # mean of 20 requests/s, uniform task mix, lengths fitted to the Azure conversation trace.
  config.workload = default_workload_config()
  config.workload.kind = "bursty"
  config.workload.rate = 20.0

  # Serving model (bes/serving_config.py). Deadline of a request: deadline_s +
  # deadline_per_token_s * output tokens, i.e. 2 s to first token plus a 30 ms per-token SLO.
  # Not type-safe: deadline_s may be one number or one per task ('2,2,3,3' or a tuple).
  config.env = ml_collections.ConfigDict(type_safe=False)
  config.env.deadline_s = 2.0        # s before the first token: one number or one per task
  config.env.deadline_per_token_s = 0.03  # s added to the deadline per output token
  config.env.reward = "hard"          # 'hard' | 'soft'
  config.env.soft_window_s = 2.0      # soft: utility falls to 0 this long after the deadline
  config.env.miss_penalty = 0.0      # a rejected or (hard) late request's utility is minus this
  config.env.queue_capacity = 64      # waiting requests per instance before rejection
  config.env.episode_len = 1024       # requests per episode (training)
  config.env.rate_ema_alpha = 0.1     # weight of the newest gap in the arrival-rate estimate

  # launch/simulate.py
  config.simulate = ml_collections.ConfigDict()
  config.simulate.num_requests = 20000     # generated workloads (a trace replays all of it)
  # fixed policies of launch/simulate.py, ';'-separated (syntax: bes/policies.py)
  config.simulate.policies = "static:opt-125m;static:opt-1.3b;static:opt-6.7b;round_robin"
  config.simulate.window_s = 10.0          # window length for the window metrics
  config.simulate.chunk = 2000             # steps per jitted chunk (progress granularity)

  # The learned router (bes/router/): Double DQN over a 2-hidden-layer MLP.
  config.dqn = ml_collections.ConfigDict(type_safe=False)
  config.dqn.hidden = "64,64"         # hidden widths (two layers as in the paper)
  config.dqn.activation = "relu"     # relu | gelu | tanh | silu
  config.dqn.obs_norm = "log"         # none | scale | log (bes/router/qnetwork.py)
  config.dqn.features = "predict"     # paper (task, loads, rate) | queues (+ the joining
                                      # instance's batch and queue fill per model) | predict
                                      # (+ the greedy's predicted latency / deadline and pick)
  config.dqn.rate_scale = 20.0        # requests/s the rate feature is divided by
  config.dqn.credit = "request"       # request: a request's utility rewards the decision that
                                      # routed it; step: the env's step reward (design page)
  config.dqn.gamma = 0.99             # discount per routing decision
  config.dqn.n_step = 3               # decisions per n-step return
  config.dqn.reward_center = True     # subtract the running mean reward (Q = relative value)
  config.dqn.center_rate = 1e-3       # step size of that running mean (per iteration)
  config.dqn.terminal_episode_end = False  # episodes cut one request stream: not terminal
  config.dqn.dueling = True           # value + advantage heads
  config.dqn.learning_rate = 1e-3     # Adam step size
  config.dqn.lr_decay = True          # linear decay to learning_rate * lr_final_frac
  config.dqn.lr_final_frac = 0.05     # (lr_decay) the final learning rate / learning_rate
  config.dqn.max_grad_norm = 10.0     # global-norm gradient clipping
  config.dqn.huber_delta = 1.0        # Huber loss: quadratic below this TD error
  config.dqn.reward_scale = 1.0       # (centred) returns are multiplied by this
  config.dqn.batch_size = 256         # n-step transitions per gradient step
  config.dqn.replay_capacity = 2048   # transitions per parallel environment
  config.dqn.num_envs = 64            # parallel environments per seed
  config.dqn.max_passes = 1           # event passes per env call (step_async)
  config.dqn.num_iterations = 20000   # env calls per environment (each: 1 action offered)
  config.dqn.updates_per_iteration = 1  # gradient steps per iteration
  config.dqn.learning_starts = 500    # iterations before the first gradient step
  config.dqn.eps_start = 1.0          # epsilon-greedy exploration, linear from eps_start
  config.dqn.eps_end = 0.02           # to eps_end
  config.dqn.eps_decay_frac = 0.3     # of num_iterations
  config.dqn.demo = "deadline_greedy" # '' | deadline_greedy: a demonstrator some exploratory
                                      # actions come from (bes/router/dqn.py)
  config.dqn.demo_frac = 0.8          # share of exploratory actions the demonstrator takes
  config.dqn.action_mask = "on_time_else_any"  # none | on_time: greedy choices only
                                               # among the models the reference greedy
                                               # predicts on time, or its pick |
                                               # on_time_else_any: any model when none
                                               # is on time (needs features='predict';
                                               # bes/router/qnetwork.py)
  config.dqn.reference = "1.25,1,0"   # the reference greedy (predict features, demo, mask):
                                      # its slack,turnover,dump (bes/heuristics.py)
  config.dqn.mask_slack = 1.25        # the mask's on-time test: predicted latency x this <=
                                      # the deadline (1.25: the reference greedy's slack;
                                      # lower also allows models predicted slightly late)
  config.dqn.target_update = "periodic"   # periodic | polyak
  config.dqn.target_period = 2000     # gradient steps between target copies (periodic)
  config.dqn.polyak_tau = 0.005       # (polyak)

  # launch/train.py: chunks of scanned iterations, evaluation and checkpoints between them.
  config.train = ml_collections.ConfigDict(type_safe=False)
  config.train.chunk_iterations = 2000    # per chunk (divides dqn.num_iterations)
  config.train.eval_episode_len = 2048    # requests per greedy evaluation episode
  config.train.eval_episodes = 4          # greedy evaluation episodes after each chunk
  config.train.keep_checkpoints = 2       # the latest checkpoints kept
  config.train.select_best = True     # the router kept is the best-evaluated chunk's (per seed)
  config.train.rate_multipliers = ""  # e.g. '0.25,0.5,1,2,4': env i trains at rate * m[i % k]
  config.train.task_mixes = ""        # e.g. 'uniform;0.55,0.15,0.15,0.15': env i's task mix
  config.train.burstiness = ""        # e.g. '0.5,1,1.5': env i's bursty arrivals b times as
                                      # bursty (sigmas x b, cv_median ** b; 0 = Poisson)
  config.train.tune_heuristics = True  # tune the hand-written baselines on the same workload

  # Device mesh (bes/parallel/mesh.py): sizes of its axes; -1 = the devices left over.
  # seed: vmapped seeds; data: parallel environments, batches, sweep points; model: tensor
  # parallelism of served models. A run resumes on any mesh or number of processes (these
  # keys are not compared); several processes: launch/train.py --num_processes (WORKSPACE.md).
  config.mesh = ml_collections.ConfigDict()
  config.mesh.seed = 1                # devices along the seed axis (divides num_seeds)
  config.mesh.data = -1               # devices along the data axis (divides dqn.num_envs)
  config.mesh.model = 1               # devices along the model (tensor-parallel) axis

  config.seed = 0                     # network init, workload draws and exploration
  config.num_seeds = 1                # seeds trained together (vmapped), keys split from seed
  return config
