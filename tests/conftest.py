"""Fixtures and hooks of the test suite; the plain helpers are in helpers.py.

Markers (assigned here by module or test name, so test bodies stay free of them):

- ``paraview``: runs ParaView (pvpython, pvbatch, the GUI under Xvfb, mpiexec pvbatch, or the
  CMake plugin build). Every ``paraview`` test is also ``slow``.
- ``training``: needs torch (the ``train`` extra): every test of a module that holds ``torch`` at
  module level, and the tests named in ``TRAINING_TESTS``. ``pytest -m "not training"`` is the
  suite of a runtime-only install.
- ``slow``: took more than about 2 s on the 2-core reference machine (measured with
  ``--durations=0``; listed in ``SLOW_TESTS``), or starts ParaView. A new test is fast until
  measured otherwise: add it to ``SLOW_TESTS`` when ``make test-fast`` shows it over ~2 s.

``make test-fast`` runs ``pytest -m "not slow"``: every fast test, torch ones included (data
model, I/O, options, metrics, projection math, bundle checks, losses), in well under a minute.
``make test`` runs everything, as CI does.

Two markers skip tests by what the machine has, checked only when a marked test runs:

- ``without_cuda(runtime, cases=None)``: the test asserts that ``--device cuda`` FAILS, so it is
  skipped where ``runtime`` ("onnxruntime" or "torch") has a working CUDA device; ``cases``
  limits the skip to those parametrized ids.
- ``with_cuda(runtime)``: the test needs a working CUDA device in ``runtime``; skipped without.
"""

from __future__ import annotations

import types

import pytest
from helpers import CUDA_PROBES, make_ensemble

from sense_core.ensemble import Ensemble

ALL = "*"

# Modules that start ParaView (they are also `slow`).
PARAVIEW_MODULES = {
    "test_cmake",
    "test_demo",
    "test_gui",
    "test_mpi",
    "test_paraview",
    "test_reliability_paraview",
}

# Tests that need torch besides those of modules with a module-level ``torch`` (all of which
# are `training`): whole modules (ALL) or the named tests of a module.
TRAINING_TESTS: dict[str, set[str] | str] = {
    "test_cuda": {"test_training_device_cuda_is_chosen_when_a_gpu_works"},
    "test_inference": {"test_onnx_matches_torch_through_the_runtime"},
    "test_paraview": {"test_shim_restores_getargspec_and_environment_is_visible"},
    "test_projector": ALL,
    "test_reliability": {"test_training_killed_mid_epoch_resumes_to_the_uninterrupted_result"},
    "test_unusual": {
        "test_planted_members_of_another_generator_rank_in_the_top_percent",
        "test_onnx_decoder_matches_torch_and_gives_the_training_reconstruction_error",
        "test_a_decoder_left_from_another_encoder_is_refused",
        "test_scores_in_csv_npz_report_map_arrays_and_sense_unusual",
        "test_a_failed_decoder_export_keeps_the_encoder_and_drops_a_stale_decoder",
        "test_paraview_map_is_coloured_by_unusualness_and_selects_the_most_unusual",
    },
}

# Tests measured over ~2 s (2 cores, pytest --durations=0): whole modules (ALL) or named tests.
SLOW_TESTS: dict[str, set[str] | str] = {
    "test_autoencoder": {"test_onnx_export_of_the_encoder_matches_torch"},
    "test_distributed": ALL,
    "test_encoder": ALL,
    "test_evaluation": ALL,
    "test_export": {
        "test_export_of_efficientnet_v2_is_within_tolerance",
        "test_export_matches_torch_with_dynamic_batch",
        "test_export_refuses_a_mismatch_and_writes_nothing",
    },
    "test_fit": ALL,
    "test_fuzz": {
        "test_any_labels_csv_is_read_or_rejected_clearly",
        "test_damaged_member_files_are_read_or_rejected_clearly",
        "test_coverage_guided_fuzzing_finds_no_failure",
    },
    "test_generators": {
        "test_channels_shapes_classes_labels_and_parameters",
        "test_channels_posterior_matches_the_borehole_logs_better_than_the_prior",
    },
    "test_inference": {
        "test_onnx_matches_torch_through_the_runtime",
        "test_streaming_memory_is_bounded_by_the_batch",
    },
    "test_labeler": {
        "test_cli_help_and_round_trip",
        "test_training_beats_chance_and_writes_everything",
        "test_bundle_round_trip_and_onnx_matches_torch",
        "test_resume_gives_the_uninterrupted_result",
    },
    "test_packaging": {"test_wheel_ships_the_default_bundles_and_a_plain_install_finds_them"},
    "test_process_tree": {"test_timeout_kills_children_and_grandchildren_and_reports_output"},
    "test_projection": {  # the umap_maps fixture and umap's own k-NN compile for seconds
        "test_umap_is_reproducible_with_a_seed_and_uses_exact_knn",
        "test_umap_without_exact_knn_and_small_inputs",
        "test_warmup_compiles_in_this_process",
    },
    "test_projector": ALL,
    "test_reliability": {
        "test_training_killed_mid_epoch_resumes_to_the_uninterrupted_result",
        "test_interrupted_embed_leaves_the_previous_outputs_and_no_partial_file",
        "test_no_user_file_is_ever_unpickled",
        "test_disk_full_and_read_only_output_folders",
    },
    "test_runtime_cli": {
        "test_warmup_command",
        "test_project_again_from_a_saved_embedding",
        "test_outputs_are_not_replaced_without_overwrite",
        "test_runtime_works_without_torch",
        "test_embed_in_process_with_umap_and_reproject_with_the_projector",
    },
    "test_unusual": {
        "test_planted_members_of_another_generator_rank_in_the_top_percent",
        "test_onnx_decoder_matches_torch_and_gives_the_training_reconstruction_error",
        "test_a_decoder_left_from_another_encoder_is_refused",
        "test_scores_in_csv_npz_report_map_arrays_and_sense_unusual",
        "test_a_failed_decoder_export_keeps_the_encoder_and_drops_a_stale_decoder",
    },
}


def _listed(table: dict[str, set[str] | str], module: str, name: str) -> bool:
    entry = table.get(module)
    return entry == ALL or (entry is not None and name in entry)


def _imports_torch(item: pytest.Item) -> bool:
    """Whether the test's module holds ``torch`` at module level (import or importorskip)."""
    module = getattr(item, "module", None)
    return isinstance(getattr(module, "torch", None), types.ModuleType)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test ``paraview``/``training``/``slow`` from the tables above."""
    for item in items:
        module = item.path.stem
        name = getattr(item, "originalname", item.name)
        if module in PARAVIEW_MODULES:
            item.add_marker(pytest.mark.paraview)
        if _imports_torch(item) or _listed(TRAINING_TESTS, module, name):
            item.add_marker(pytest.mark.training)
        if item.get_closest_marker("paraview") or _listed(SLOW_TESTS, module, name):
            item.add_marker(pytest.mark.slow)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip ``without_cuda`` tests where CUDA works and ``with_cuda`` tests where it does not."""
    for mark in item.iter_markers("without_cuda"):
        runtime = mark.args[0]
        cases = mark.kwargs.get("cases")
        callspec = getattr(item, "callspec", None)
        if cases is not None and (callspec is None or callspec.id not in cases):
            continue
        if CUDA_PROBES[runtime]():
            pytest.skip(
                f"{runtime} has a working CUDA device here, and this test asserts that "
                "--device cuda fails"
            )
    for mark in item.iter_markers("with_cuda"):
        runtime = mark.args[0]
        if not CUDA_PROBES[runtime]():
            pytest.skip(f"needs a working CUDA device in {runtime}; this machine has none")


@pytest.fixture
def ensemble() -> Ensemble:
    return make_ensemble()
