"""Static int8 quantisation of a model's ONNX graph, kept only when its held-out metric holds.

:func:`quantize_onnx` quantises a float32 export with ONNX Runtime's static QDQ quantisation (per-channel int8
weights, uint8 activations, MinMax ranges calibrated on training images). The acceptance check, which scores
both graphs on the model's held-out split, is :func:`medlens.evaluation.int8.quantize_model`; it writes the
graph and its report (``int8.json``) to the model's cache folder (``$MEDLENS_HOME/cache/onnx/<sha256 of the
weights>/``). :func:`int8_path` returns the graph only when accepted, and predictors with
``precision="int8"`` load it (float32 otherwise).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from medlens.errors import BundleError
from medlens.inference.bundle import Bundle

logger = logging.getLogger(__name__)

TOLERANCE = 0.005
INT8_FILE = "model.int8.onnx"
REPORT_FILE = "int8.json"


def int8_path(source: str | Path | Bundle) -> Path | None:
    """The accepted int8 graph of a model (see the module docstring), else None."""
    from medlens.inference.export import onnx_cache_dir

    try:
        folder = onnx_cache_dir(source)
        report = json.loads((folder / REPORT_FILE).read_text())
    except (OSError, ValueError, BundleError):
        return None
    path = folder / INT8_FILE
    return path if report.get("accepted") and path.is_file() else None


def quantize_onnx(fp32: str | Path, out: str | Path, calibration: np.ndarray) -> Path:
    """QDQ static quantisation of ``fp32`` into ``out`` (written atomically; medlens metadata kept).

    Args:
        calibration: float32 ``(N, C, H, W)`` model inputs (preprocessed) for the activation ranges.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calibration[i : i + 1]} for i in range(len(calibration))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quant-") as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )  # fmt: skip
        proto, meta = onnx.load(str(q)), onnx.load(str(fp32), load_external_data=False).metadata_props
        del proto.metadata_props[:]
        proto.metadata_props.extend(meta)
        onnx.save(proto, str(q))
        os.replace(q, out)
    return out
