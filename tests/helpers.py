"""Plain helpers shared by the tests: small generated ensembles and ONNX models, runners for the
``sense`` command, ParaView scripts and process trees, and probes for a working CUDA device.

Import them with ``from helpers import ...``; fixtures and hooks live in conftest.py.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

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


def _descendants(root: int) -> list[int]:
    """Process ids below ``root`` (children, grandchildren, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process has just exited
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_process_tree(process: subprocess.Popen) -> None:
    """SIGKILL ``process``, everything below it, and its process group (if it leads one)."""
    for pid in [process.pid, *_descendants(process.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def run_process_tree(command: list[str], timeout: float, **options) -> subprocess.CompletedProcess:
    """``subprocess.run(command, capture_output=True, text=True, timeout=...)`` whose timeout
    kills the whole process tree and fails with the output so far.

    The launchers start ParaView, Xvfb and MPI ranks as grandchildren. ``subprocess.run``
    kills only the direct child on a timeout and then waits for end-of-file on the pipes,
    which the surviving grandchildren hold open: a slow ParaView test would hang the suite
    instead of failing."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **options,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_process_tree(process)
        stdout, stderr = process.communicate()
        raise AssertionError(
            f"{' '.join(map(str, command))} ran longer than {timeout} s and was killed with "
            f"its child processes\nstdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}"
        ) from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def run_sense(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the installed ``sense`` command; return the completed process (text output)."""
    result = run_process_tree([SENSE, *args], timeout, cwd=REPO)
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
    completed = run_process_tree([SENSE, program, str(script_path)], 600, cwd=REPO, env=env)
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


def make_mlp_onnx(
    path: Path,
    latent_dim: int,
    hidden: int = 32,
    seed: int = 0,
    input_name: str = "latent",
    output_name: str = "xy",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Write a tiny projector-like ONNX MLP, latent (B, D) -> Gemm-Relu-Gemm -> (B, 2), with a
    dynamic batch axis; return its [(weight, bias), ...] so tests can compute the output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    layers = []
    for fan_in, fan_out in ((latent_dim, hidden), (hidden, 2)):
        weight = (rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        layers.append((weight, rng.normal(size=fan_out).astype(np.float32)))
    initializers = []
    for i, (weight, bias) in enumerate(layers):
        initializers += [
            numpy_helper.from_array(weight, f"w{i}"),
            numpy_helper.from_array(bias, f"b{i}"),
        ]
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", [input_name, "w0", "b0"], ["h0"]),
            helper.make_node("Relu", ["h0"], ["a0"]),
            helper.make_node("Gemm", ["a0", "w1", "b1"], [output_name]),
        ],
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", latent_dim])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", 2])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return layers


def mlp_reference(latents: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """What :func:`make_mlp_onnx`'s model computes, in numpy (float64)."""
    hidden = np.maximum(latents.astype(np.float64) @ layers[0][0] + layers[0][1], 0.0)
    return hidden @ layers[1][0] + layers[1][1]


def make_runtime_bundle(
    folder: Path,
    shape: tuple[int, int, int] = (1, 12, 10),
    latent_dim: int = 6,
    class_names: tuple[str, ...] = ("straight", "meander", "braided"),
    labeler: bool = True,
    projector: bool = False,
    mean: float = 0.5,
    std: float = 2.0,
) -> dict:
    """A bundle of linear ONNX models (encoder, optional labeler and MLP projector) in ``folder``;
    returns the weights: {"encoder": W, "labeler": W, "projector": layers}."""
    from sense_core.bundle import add_model, new_manifest, read_manifest
    from sense_core.ensemble import NormalizationStats

    folder = Path(folder)
    scratch = folder.parent / f".{folder.name}-models"
    scratch.mkdir(parents=True, exist_ok=True)
    stats = NormalizationStats(mean=(mean,) * shape[0], std=(std,) * shape[0], count=100)
    manifest = new_manifest(shape, stats, class_names)
    weights = {"encoder": make_linear_onnx(scratch / "e.onnx", shape, latent_dim, 0, "fields", "z")}
    add_model(
        folder,
        "encoder",
        scratch / "e.onnx",
        manifest,
        input_name="fields",
        output_name="z",
        opset=17,
        details={"latent_dim": latent_dim},
    )
    if labeler:
        weights["labeler"] = make_linear_onnx(
            scratch / "l.onnx", shape, len(class_names), 1, "fields", "logits"
        )
        add_model(
            folder,
            "labeler",
            scratch / "l.onnx",
            read_manifest(folder),
            input_name="fields",
            output_name="logits",
            opset=17,
        )
    if projector:
        weights["projector"] = make_mlp_onnx(scratch / "p.onnx", latent_dim, seed=2)
        add_model(
            folder,
            "projector",
            scratch / "p.onnx",
            read_manifest(folder),
            input_name="latent",
            output_name="xy",
            opset=17,
            details={"latent_dim": latent_dim},
        )
    return weights


def run_paraview_gui(*args: str, config_home: Path | None = None) -> subprocess.CompletedProcess:
    """Start the ParaView GUI with ``sense paraview ARGS --exit`` (under a private Xvfb without a
    DISPLAY); ``config_home`` isolates its settings (XDG_CONFIG_HOME)."""
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    if config_home is not None:
        env["XDG_CONFIG_HOME"] = str(config_home)
    return run_process_tree([SENSE, "paraview", *args, "--exit"], 300, cwd=REPO, env=env)


def write_plain_npz(path: Path, ensemble, labels=None) -> Path:
    """``ensemble`` as the minimal .npz that `sense fit` accepts from any tool: ``fields``,
    ``labels`` (−1 = unlabeled; ``labels`` overrides the ensemble's) and ``class_names``."""
    np.savez(
        path,
        fields=ensemble.fields,
        labels=ensemble.labels if labels is None else labels,
        class_names=np.array(ensemble.class_names),
    )
    return path


CUDA_PROVIDER = "CUDAExecutionProvider"


@functools.cache
def onnxruntime_cuda_works() -> bool:
    """Whether onnxruntime really runs a session on CUDA here. A listed CUDA provider is not
    enough (onnxruntime-gpu falls back to the CPU quietly when its libraries or the GPU are
    missing), so a tiny session is created and asked which provider it got."""
    import warnings

    import onnxruntime

    if CUDA_PROVIDER not in onnxruntime.get_available_providers():
        return False
    if hasattr(onnxruntime, "preload_dlls"):  # as sense_core.inference does before a session
        try:
            onnxruntime.preload_dlls()
        except Exception:  # noqa: BLE001 - a failed preload only means no CUDA
            return False
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(folder) / "probe.onnx"
        make_linear_onnx(path, (1, 2, 2), 1)
        try:
            session = onnxruntime.InferenceSession(
                str(path), options, providers=[CUDA_PROVIDER, "CPUExecutionProvider"]
            )
        except Exception:  # noqa: BLE001 - any failure to start on CUDA means no CUDA
            return False
    return session.get_providers()[0] == CUDA_PROVIDER


@functools.cache
def torch_cuda_works() -> bool:
    """Whether torch sees a usable CUDA device (False when torch is not installed)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


CUDA_PROBES = {"onnxruntime": onnxruntime_cuda_works, "torch": torch_cuda_works}


def doc_blocks(text: str) -> list[tuple[str, str, str]]:
    """(language, marker, code) of every fenced block of a Markdown text; ``marker`` is the
    ``<!-- doc-test: ... -->`` comment on the line before it, if any."""
    pattern = re.compile(r"(?:<!-- doc-test: (.*?) -->\n)?```(\w*)\n(.*?)```", re.S)
    return [(m.group(2), m.group(1) or "", m.group(3)) for m in pattern.finditer(text)]


def run_doc_blocks(doc: Path, cwd: Path, env: dict) -> list[tuple[str, str]]:
    """Run the ```sh blocks of ``doc`` in order, as written, with ``bash -e`` in ``cwd``: a
    ``doc-test: file NAME`` block is saved as NAME first, ``doc-test: skip (why)`` ones are
    left out, any other block fails. Returns (code, stdout) of each block run; a failing block
    fails with its output."""
    ran = []
    for language, marker, code in doc_blocks(doc.read_text()):
        if marker.startswith("skip"):
            continue
        if marker.startswith("file "):
            (cwd / marker.split()[1]).write_text(code)
            continue
        assert language == "sh", f"a {language} block is neither run nor saved: {code[:80]}"
        done = subprocess.run(
            ["bash", "-e", "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, f"{code}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        ran.append((code, done.stdout))
    return ran


@functools.lru_cache(maxsize=1)
def namespaces_work() -> bool:
    """Whether ``unshare -rm`` (user + mount namespaces) works here, for tests that mount a
    real tmpfs (full or read-only) without root."""
    try:
        probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0
