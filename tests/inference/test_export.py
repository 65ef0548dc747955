"""ONNX and TorchScript export: one graph per formulation, the same probabilities as PyTorch.

References: the models' logits turned into probabilities by hand, ONNX Runtime on CPU, and
``torch.jit.load``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxr_lightning import export
from cxr_lightning.inference.bundle import load_model
from tests.helpers.bundles import hand_probabilities, saved_model

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("formulation", ["binary", "multiclass"])
def test_onnx_and_torchscript_match_pytorch(tmp_path, formulation):
    model_path, models = saved_model(tmp_path, formulation, thresholds={"edema": 0.3,
                                                                        "effusion": 0.7})
    written = export.main(["--ckpt", str(model_path), "--out", str(tmp_path / "export"),
                           "--opset", "18"])
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))  # N != 2
    expected = hand_probabilities(formulation, models, images).numpy()

    graph = onnx.load(str(written["onnx"]))
    onnx.checker.check_model(graph)
    assert next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    properties = {p.key: json.loads(p.value) for p in graph.metadata_props}
    assert properties["formulation"] == formulation
    assert properties["thresholds"] == {"edema": 0.3, "effusion": 0.7}
    session = onnxruntime.InferenceSession(str(written["onnx"]),
                                           providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    onnx_output, = session.run(["probabilities"], {"images": images.numpy()})
    assert onnx_output.shape == (5, 2)
    np.testing.assert_allclose(onnx_output, expected, atol=1e-4, rtol=0)

    scripted = torch.jit.load(str(written["torchscript"]))
    with torch.no_grad():
        np.testing.assert_allclose(scripted(images).numpy(), expected, atol=1e-5, rtol=0)

    description = json.loads(written["description"].read_text())
    assert description["input"]["shape"] == ["N", 3, 32, 32]
    assert description["output"]["columns"] == ["edema", "effusion"]
    assert description["preprocessing"]["image_size"] == 32
    assert description["thresholds"] == {"edema": 0.3, "effusion": 0.7}


def test_old_opsets_and_unknown_formats_are_refused(tmp_path, capsys):
    model_path, _ = saved_model(tmp_path, "multilabel")
    with pytest.raises(ValueError, match="opset >= 17"):
        export.main(["--ckpt", str(model_path), "--out", str(tmp_path), "--opset", "13"])
    with pytest.raises(SystemExit) as refused:
        export.main(["--ckpt", str(model_path), "--out", str(tmp_path), "--formats", "tflite"])
    assert refused.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown"):
        export.export_model(load_model(model_path), tmp_path, formats=["tflite"])
