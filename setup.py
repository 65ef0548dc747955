"""The one thing pyproject.toml cannot say: conf/ (top level of the repository) ships inside the
package as ``cxr_lightning.conf``, where Hydra finds it (``pkg://cxr_lightning.conf``)."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["cxr_lightning*"]), "cxr_lightning.conf"],
      package_dir={"cxr_lightning.conf": "conf"})
