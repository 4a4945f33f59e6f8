"""Shared fixtures: small generated ensembles and a runner for ParaView scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sense_core.ensemble import Ensemble

REPO = Path(__file__).resolve().parents[1]
SENSE = str(Path(sys.executable).with_name("sense"))


def make_ensemble(count: int = 24, channels: int = 1, height: int = 12, width: int = 10, seed=0):
    """A small ensemble with 3 classes, some unlabeled members and per-member metadata."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 4 - 1  # -1, 0, 1, 2, -1, ...
    fields = rng.normal(size=(count, channels, height, width)).astype(np.float32)
    fields += labels[:, None, None, None]
    return Ensemble(
        fields=fields,
        labels=labels,
        class_names=("straight", "meander", "braided"),
        member_ids=[f"run{i}" for i in range(count)],
        metadata={"amplitude": rng.uniform(size=count), "chain": np.arange(count) % 3},
    )


@pytest.fixture
def ensemble() -> Ensemble:
    return make_ensemble()


def run_sense(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the installed ``sense`` command; return the completed process (text output)."""
    result = subprocess.run(
        [SENSE, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"sense {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


def run_paraview_script(
    script: str, tmp_path: Path, program: str = "pvpython", check: bool = True
) -> dict:
    """Run ``script`` with ``sense pvpython``/``pvbatch``; it reports by assigning ``RESULT``
    (JSON-serialisable), which is returned. Failures show the program's output."""
    script_path = tmp_path / "pv_script.py"
    result_path = tmp_path / "pv_result.json"
    body = textwrap.dedent(script)
    script_path.write_text(
        "import json\nRESULT = None\n"
        + body
        + f"\nwith open({str(result_path)!r}, 'w') as f:\n    json.dump(RESULT, f)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    completed = subprocess.run(
        [SENSE, program, str(script_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=env,
    )
    output = f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    if check and (completed.returncode != 0 or not result_path.exists()):
        raise AssertionError(f"{program} failed ({completed.returncode})\n{output}")
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    return {"result": result, "output": output, "returncode": completed.returncode}


def make_linear_onnx(
    path: Path,
    input_shape: tuple[int, int, int],
    outputs: int,
    seed: int = 0,
    input_name: str = "fields",
    output_name: str = "output",
) -> np.ndarray:
    """Write a tiny ONNX model, fields (B, C, H, W) -> flatten -> matmul -> (B, outputs), with
    a dynamic batch axis; return its weight matrix so tests can compute the expected output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(seed).normal(size=(int(np.prod(input_shape)), outputs))
    weights = weights.astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", [input_name], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weights"], [output_name]),
        ],
        "linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", *input_shape])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", outputs])],
        initializer=[numpy_helper.from_array(weights, "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return weights
