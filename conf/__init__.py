"""conf/ is installed as the package cxr_lightning.conf (setup.py), where Hydra finds it."""
