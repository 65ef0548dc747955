"""Export a trained model to ONNX and TorchScript: ``cxr-export``
(``python -m cxr_lightning.export``).

Writes into ``--out``:

* ``model.onnx`` (ONNX opset >= 17; default 18, through ``torch.onnx.export(dynamo=True)``,
  the torch.export-based exporter, which needs the ``onnx`` and ``onnxscript`` packages:
  ``pip install 'cxr-lightning[export]'``);
* ``model.torchscript.pt`` (``torch.jit.trace``; load with ``torch.jit.load``; torch marks
  TorchScript as deprecated, ONNX is the portable format);
* ``export.json``: what the graphs expect and mean.

Both graphs hold every model of the formulation (binary: both models in one graph).
**Input** ``images``: float32 (N, C, S, S), the normalised batch training fed the network:
the file decoded and resized as the training cache does (``preprocessing`` in export.json:
size S, resize policy, interpolation, histogram equalisation), then ``(x / 255 - mean) / std``
per channel (C = 3 grey replicas with ImageNet's mean/std, or C = 1). N is dynamic.
**Output** ``probabilities``: float32 (N, 2), P(edema) and P(effusion) (multiclass: the
marginals). Labels: probability > ``thresholds[finding]`` from export.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from cxr_lightning.commands import command_parser, refuse_key_value
from cxr_lightning.console import quiet_console
from cxr_lightning.errors import run_command
from cxr_lightning.findings import FINDINGS
from cxr_lightning.inference.bundle import ModelBundle, load_model
from cxr_lightning.inference.network import FindingProbabilities

log = logging.getLogger(__name__)

MIN_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
FORMATS = ("onnx", "torchscript")
EXAMPLE_BATCH = 2  # > 1, so that torch.export does not specialise the batch dimension


def example_input(bundle: ModelBundle) -> torch.Tensor:
    """A float (2, C, S, S) batch of the shape the model takes (values are irrelevant)."""
    size = bundle.preprocessing.image_size
    return torch.randn(EXAMPLE_BATCH, bundle.preprocessing.channels, size, size,
                       generator=torch.Generator().manual_seed(0))


def export_onnx(network: FindingProbabilities, example: torch.Tensor, path: Path,
                opset: int = 18, metadata: dict[str, str] | None = None) -> Path:
    """ONNX graph ``images`` (N dynamic) -> ``probabilities`` (N, 2), weights inside the file;
    ``metadata`` goes into the model's metadata_props."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset={opset}: the export needs opset >= {MIN_OPSET}")
    try:
        import onnx
    except ImportError as error:
        raise ImportError("ONNX export needs onnx and onnxscript: "
                          "pip install 'cxr-lightning[export]'") from error
    batch = torch.export.Dim("batch")
    torch.onnx.export(network.eval(), (example,), path, dynamo=True, opset_version=opset,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_shapes={INPUT_NAME: {0: batch}}, external_data=False,
                      verbose=False)
    if metadata:
        model = onnx.load(str(path))
        onnx.helper.set_model_props(model, metadata)
        onnx.save(model, str(path))
    return path


def export_torchscript(network: FindingProbabilities, example: torch.Tensor,
                       path: Path) -> Path:
    """Traced TorchScript module with the same input and output as the ONNX graph."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is deprecated.*", category=FutureWarning)
        traced = torch.jit.trace(network.eval(), example)
        traced.save(str(path))
    return path


def export_description(bundle: ModelBundle, opset: int) -> dict:
    """export.json: input, output, findings, thresholds, preprocessing and provenance."""
    size = bundle.preprocessing.image_size
    return {
        "source": str(bundle.source),
        "formulation": bundle.formulation,
        "backbone": bundle.backbone,
        "input": {"name": INPUT_NAME, "dtype": "float32",
                  "shape": ["N", bundle.preprocessing.channels, size, size]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", len(FINDINGS)],
                   "columns": list(FINDINGS), "meaning": "probability of each finding"},
        "thresholds": bundle.thresholds,
        "label_rule": "label = 1 if probability > threshold else 0",
        "preprocessing": bundle.preprocessing_record,
        "onnx_opset": opset,
        "code_version": bundle.code_version,
    }


def export_model(bundle: ModelBundle, out_dir: Path, opset: int = 18,
                 formats: Sequence[str] = FORMATS) -> dict[str, Path]:
    """Write the requested formats and export.json into ``out_dir``; their paths by format."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"formats={list(formats)}: unknown {unknown}; choose from {FORMATS}")
    out_dir.mkdir(parents=True, exist_ok=True)
    network, example = bundle.network(), example_input(bundle)
    description = export_description(bundle, opset)
    written: dict[str, Path] = {}
    if "onnx" in formats:
        metadata = {key: json.dumps(description[key]) for key in
                    ("formulation", "backbone", "thresholds", "preprocessing", "output")}
        written["onnx"] = export_onnx(network, example, out_dir / "model.onnx", opset, metadata)
    if "torchscript" in formats:
        written["torchscript"] = export_torchscript(network, example,
                                                    out_dir / "model.torchscript.pt")
    written["description"] = out_dir / "export.json"
    written["description"].write_text(json.dumps(description, indent=2))
    for name, path in written.items():
        log.info("Wrote %s: %s", name, path)
    return written


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line (``--help`` shows it)."""
    refuse_key_value(argv, ("ckpt", "out", "opset", "formats"))
    parser = command_parser("cxr_lightning.export", __doc__ or "")
    parser.add_argument("--ckpt", required=True, metavar="PATH",
                        help="the model: a job's model.pt (or a multilabel/multiclass .ckpt)")
    parser.add_argument("--out", default="export", metavar="DIR", help="output folder")
    parser.add_argument("--opset", type=int, default=18, metavar="N",
                        help=f"ONNX opset (>= {MIN_OPSET})")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS),
                        help="what to write")
    parser.add_argument("--log-level", default="INFO", help="logging level")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Run the CLI; returns the written paths by format."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    quiet_console()
    for chatty in ("onnx_ir", "onnxscript"):  # one INFO line per graph optimisation pass
        logging.getLogger(chatty).setLevel(logging.WARNING)
    return export_model(load_model(args.ckpt), Path(args.out), args.opset, args.formats)


if __name__ == "__main__":
    raise SystemExit(run_command(main))
