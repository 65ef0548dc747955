"""Using a trained model: the self-describing artefact, prediction, heatmaps and export.

Modules: :mod:`.bundle` (save / load the self-describing artefact),
:mod:`.network` (members -> one (N, 2) probability network), :mod:`.inputs` (paths, folders,
globs, manifests), :mod:`.images` (file -> model input, exactly as the training cache),
:mod:`.heatmaps` (Grad-CAM overlays in the original geometry), :mod:`.predictor` (the batch
loop behind ``python -m cxr_lightning.predict``).
"""
