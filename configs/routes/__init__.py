"""Routes to a better router (issue 11): each file is the default config plus one change,
trained by `launch/train.py --config=configs/routes/NAME.py` and measured on the held-out
protocol (`launch/heldout.py`, results/README.md "Held-out protocol")."""
