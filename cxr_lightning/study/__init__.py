"""The whole study as one resumable pipeline (``cxr-study``, ``make study``).

:mod:`~cxr_lightning.study.parts` names the parts and their overrides,
:mod:`~cxr_lightning.study.progress` the one progress view, :mod:`~cxr_lightning.study.pipeline`
runs them (each training part a ``cxr-train`` multirun resumed in its own directory), and
``__main__`` is the command line.
"""
