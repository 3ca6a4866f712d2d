"""The experiments behind the numbers in the docs, each `python -m experiments.<name>` (README, Experiments);
common.py holds their shared runner."""
