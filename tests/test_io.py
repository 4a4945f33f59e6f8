"""Readers and writers: .npz files and member folders (.npy, .png, .tif, .vti), side files,
lazy reading, bad input and atomic writes."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
import tifffile
from helpers import make_ensemble
from PIL import Image

import sense_core.io.npz as npz_module
from sense_core.ensemble import UNLABELED, Ensemble, MemberStore
from sense_core.errors import EnsembleError, SenseError
from sense_core.io import open_ensemble, read_ensemble, read_member_file, write_ensemble
from sense_core.io.folder import list_member_files


def assert_same_ensemble(actual: Ensemble, expected: Ensemble) -> None:
    np.testing.assert_array_equal(actual.fields, expected.fields)
    np.testing.assert_array_equal(actual.labels, expected.labels)
    assert actual.class_names == expected.class_names
    assert actual.member_ids == expected.member_ids
    assert set(actual.metadata) == set(expected.metadata)
    for key, values in expected.metadata.items():
        np.testing.assert_array_equal(actual.metadata[key], values)
        assert actual.metadata[key].dtype.kind == values.dtype.kind


@pytest.mark.parametrize("target", ["ens.npz", "folder_vti", "folder_npy"])
def test_round_trip(tmp_path, ensemble, target):
    member_format = "npy" if target.endswith("npy") else "vti"
    path = write_ensemble(ensemble, tmp_path / target, member_format=member_format)
    assert_same_ensemble(read_ensemble(path), ensemble)


def test_multichannel_round_trip_through_vti(tmp_path):
    ensemble = make_ensemble(count=5, channels=3, height=7, width=9)
    back = read_ensemble(write_ensemble(ensemble, tmp_path / "members"))
    assert back.member_shape == (3, 7, 9)
    np.testing.assert_array_equal(back.fields, ensemble.fields)


def test_folder_has_paraview_index_files_and_labels_csv(tmp_path, ensemble):
    folder = write_ensemble(ensemble, tmp_path / "members")
    names = set(os.listdir(folder))
    assert {"ensemble.vtm", "ensemble.pvd", "labels.csv", "ensemble.json"} <= names
    assert f"{ensemble.member_ids[0]}.vti" in names
    rows = (folder / "labels.csv").read_text().splitlines()
    assert rows[0] == "member_id,label"
    assert rows[1] == "run0,"  # unlabeled
    assert rows[2] == "run1,straight"
    vtm = (folder / "ensemble.vtm").read_text()
    assert vtm.count("<DataSet ") == len(ensemble)
    assert 'name="run3" file="run3.vti"' in vtm


def test_npz_streams_members_when_large(tmp_path, ensemble, monkeypatch):
    path = write_ensemble(ensemble, tmp_path / "ens.npz")
    monkeypatch.setattr(npz_module, "IN_MEMORY_LIMIT_BYTES", 0)
    source = open_ensemble(path)
    order = [7, 2, 2, 23, 0]
    np.testing.assert_array_equal(source.read_members(order), ensemble.fields[order])
    assert source._cache is None  # nothing was loaded whole
    assert_same_ensemble(source.load(), ensemble)


def test_streamed_writer_reads_each_member_once_in_batches(tmp_path, ensemble):
    class CountingStore(MemberStore):
        member_ids, labels = ensemble.member_ids, ensemble.labels
        class_names, metadata = ensemble.class_names, ensemble.metadata
        member_shape = ensemble.member_shape
        largest = 0

        def read_members(self, indices):
            CountingStore.largest = max(CountingStore.largest, len(indices))
            return ensemble.fields[np.asarray(indices)]

    from sense_core.io.npz import write_npz

    write_npz(CountingStore(), tmp_path / "s.npz", batch_size=5)
    assert CountingStore.largest == 5
    assert_same_ensemble(read_ensemble(tmp_path / "s.npz"), ensemble)


def test_npz_without_optional_keys(tmp_path):
    np.savez(tmp_path / "plain.npz", fields=np.ones((3, 5, 5)), labels=np.array([1, -1, 0]))
    ensemble = read_ensemble(tmp_path / "plain.npz")
    assert ensemble.class_names == ("class_0", "class_1")
    assert ensemble.member_ids == ("m000000", "m000001", "m000002")
    assert ensemble.member_shape == (1, 5, 5)


def write_image_folder(folder, count=4, mode="L", size=(10, 8)):
    folder.mkdir()
    rng = np.random.default_rng(0)
    arrays = []
    for i in range(count):
        if mode == "I;16":
            array = rng.integers(0, 65535, size=size[::-1], dtype=np.uint16)
        elif mode == "RGB":
            array = rng.integers(0, 255, size=(*size[::-1], 3), dtype=np.uint8)
        else:
            array = rng.integers(0, 255, size=size[::-1], dtype=np.uint8)
        Image.fromarray(array).save(folder / f"img{i}.png")
        arrays.append(array)
    return arrays


@pytest.mark.parametrize("mode", ["L", "I;16", "RGB"])
def test_png_members_keep_raw_values(tmp_path, mode):
    arrays = write_image_folder(tmp_path / "pngs", mode=mode)
    ensemble = read_ensemble(tmp_path / "pngs")
    channels = 3 if mode == "RGB" else 1
    assert ensemble.member_shape == (channels, 8, 10)
    expected = arrays[2] if mode != "RGB" else np.moveaxis(arrays[2], -1, 0)
    np.testing.assert_array_equal(ensemble.fields[2].reshape(expected.shape), expected)


def test_tiff_members_float_and_multichannel(tmp_path):
    folder = tmp_path / "tifs"
    folder.mkdir()
    scalar = np.random.default_rng(0).normal(size=(6, 7)).astype(np.float32)
    tifffile.imwrite(folder / "a.tif", scalar)
    planes = np.random.default_rng(1).normal(size=(2, 6, 7)).astype(np.float64)
    tifffile.imwrite(folder / "b.tiff", planes, photometric="minisblack")
    rgb = np.random.default_rng(2).integers(0, 255, size=(6, 7, 3), dtype=np.uint8)
    tifffile.imwrite(folder / "c.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(read_member_file(folder / "a.tif"), scalar[None])
    np.testing.assert_allclose(read_member_file(folder / "b.tiff"), planes)
    np.testing.assert_array_equal(read_member_file(folder / "c.tif"), np.moveaxis(rgb, -1, 0))
    tifffile.imwrite(
        folder / "d.tif", np.zeros((2, 3, 6, 7), dtype=np.float32), photometric="minisblack"
    )
    with pytest.raises(EnsembleError, match=r"d\.tif: expected a 2D field"):
        read_member_file(folder / "d.tif")


def test_labels_csv_names_indices_and_blanks(tmp_path):
    write_image_folder(tmp_path / "f", count=5)
    (tmp_path / "f" / "labels.csv").write_text(
        "member_id,label\nimg0,sand\nimg1,\nimg2,mud\nimg4,sand\n"
    )
    source = open_ensemble(tmp_path / "f")
    assert source.class_names == ("mud", "sand")
    assert list(source.labels) == [1, UNLABELED, 0, UNLABELED, 1]
    (tmp_path / "f" / "labels.csv").write_text("member_id,label\nimg0,2\nimg3,0\n")
    source = open_ensemble(tmp_path / "f")
    assert source.class_names == ("class_0", "class_1", "class_2")
    assert list(source.labels) == [2, UNLABELED, UNLABELED, 0, UNLABELED]


@pytest.mark.parametrize(
    ("labels_csv", "message"),
    [
        ("member_id,label\nimg0,a\nghost,b\n", r"line 3: unknown member 'ghost'"),
        ("member_id,label\nimg0,a\nimg1,b\nimg0,b\n", r"line 4: member 'img0' is already listed"),
        ("id,class\nimg0,a\n", "header must be 'member_id,label'"),
        ("", "empty file"),
    ],
)
def test_bad_labels_csv_names_file_and_line(tmp_path, labels_csv, message):
    write_image_folder(tmp_path / "f")
    (tmp_path / "f" / "labels.csv").write_text(labels_csv)
    with pytest.raises(EnsembleError, match=message) as error:
        open_ensemble(tmp_path / "f")
    assert "labels.csv" in str(error.value)


def test_labels_csv_with_a_class_the_ensemble_does_not_know(tmp_path, ensemble):
    folder = write_ensemble(ensemble, tmp_path / "members")
    text = (folder / "labels.csv").read_text().replace("run1,straight", "run1,delta")
    (folder / "labels.csv").write_text(text)
    with pytest.raises(EnsembleError, match="unknown class 'delta'"):
        open_ensemble(folder)


def test_unknown_files_and_duplicate_ids_are_errors(tmp_path):
    write_image_folder(tmp_path / "f")
    (tmp_path / "f" / "notes.docx").write_text("x")
    with pytest.raises(EnsembleError, match=r"unknown type: notes\.docx"):
        open_ensemble(tmp_path / "f")
    (tmp_path / "f" / "notes.docx").unlink()
    np.save(tmp_path / "f" / "img1.npy", np.zeros((8, 10)))
    with pytest.raises(EnsembleError, match="'img1' used by two files"):
        open_ensemble(tmp_path / "f")


def test_empty_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("nothing here")
    with pytest.raises(EnsembleError, match="empty"):
        open_ensemble(tmp_path / "empty")
    np.savez(tmp_path / "empty.npz", fields=np.zeros((0, 4, 4)), labels=np.zeros(0))
    with pytest.raises(EnsembleError, match="empty"):
        open_ensemble(tmp_path / "empty.npz")
    with pytest.raises(EnsembleError, match="not found"):
        open_ensemble(tmp_path / "missing.npz")
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(EnsembleError, match="not an ensemble"):
        open_ensemble(tmp_path / "x.csv")


def test_mixed_shapes_name_the_odd_file(tmp_path):
    write_image_folder(tmp_path / "f", count=3)
    Image.fromarray(np.zeros((9, 10), dtype=np.uint8)).save(tmp_path / "f" / "img9.png")
    source = open_ensemble(tmp_path / "f")
    with pytest.raises(EnsembleError, match=r"img9\.png: member 'img9' has shape .*\(1, 9, 10\)"):
        source.load()


def test_listing_reads_no_member_and_corrupt_files_are_named_when_read(tmp_path):
    write_image_folder(tmp_path / "f", count=3)
    (tmp_path / "f" / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "f" / "img5.vti").write_text("<VTKFile type='ImageData'> cut")
    (tmp_path / "f" / "img6.npy").write_bytes(b"not numpy")
    source = open_ensemble(tmp_path / "f")  # listing works
    assert source.member_ids == ("img0", "img1", "img2", "img5", "img6")
    for index, name in ((1, "img1.png"), (3, "img5.vti"), (4, "img6.npy")):
        with pytest.raises(EnsembleError, match=name):
            source.read_members([index])


def test_truncated_and_corrupt_npz(tmp_path, ensemble):
    path = write_ensemble(ensemble, tmp_path / "ens.npz")
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(EnsembleError, match="cut.npz"):
        read_ensemble(tmp_path / "cut.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 junk")
    with pytest.raises(EnsembleError, match="junk.npz"):
        open_ensemble(tmp_path / "junk.npz")
    with zipfile.ZipFile(tmp_path / "nofields.npz", "w") as archive:
        archive.writestr("labels.npy", b"")
    with pytest.raises(EnsembleError, match="no 'fields' array"):
        open_ensemble(tmp_path / "nofields.npz")


def test_object_arrays_are_refused_not_unpickled(tmp_path):
    np.savez(
        tmp_path / "pickled.npz",
        fields=np.zeros((2, 4, 4)),
        labels=np.zeros(2, dtype=int),
        member_ids=np.array([{"evil": 1}, "b"], dtype=object),
    )
    with pytest.raises(EnsembleError, match="pickled.npz"):
        open_ensemble(tmp_path / "pickled.npz")


def test_nan_policy_raise_names_member_and_fill_replaces(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    field = np.ones((4, 4), dtype=np.float32)
    np.save(folder / "good.npy", field)
    field[0, :2] = [np.nan, np.inf]
    np.save(folder / "holes.npy", field)
    with pytest.raises(EnsembleError, match=r"holes\.npy: member 'holes' has 2 non-finite"):
        read_ensemble(folder)
    filled = read_ensemble(folder, nan_policy="fill", fill_value=-1.0)
    np.testing.assert_array_equal(filled.fields[1, 0, 0, :3], [-1.0, -1.0, 1.0])


def test_nan_policy_applies_to_npz(tmp_path):
    fields = np.ones((2, 3, 3))
    fields[1, 1, 1] = np.nan
    np.savez(tmp_path / "n.npz", fields=fields, labels=np.array([-1, -1]))
    with pytest.raises(EnsembleError, match="m000001"):
        read_ensemble(tmp_path / "n.npz")
    assert read_ensemble(tmp_path / "n.npz", nan_policy="fill").fields[1, 0, 1, 1] == 0


def test_newer_folder_format_is_refused(tmp_path, ensemble):
    folder = write_ensemble(ensemble, tmp_path / "members")
    text = (folder / "ensemble.json").read_text().replace('"version": 1', '"version": 99')
    (folder / "ensemble.json").write_text(text)
    with pytest.raises(EnsembleError, match="newer than this SENSE"):
        open_ensemble(folder)


class FailingStore(MemberStore):
    """Reads fine for a while, then fails, like a disk error in the middle of a write."""

    def __init__(self, ensemble: Ensemble, fail_after: int):
        self.ensemble, self.fail_after = ensemble, fail_after
        self.member_ids, self.labels = ensemble.member_ids, ensemble.labels
        self.class_names, self.metadata = ensemble.class_names, ensemble.metadata

    @property
    def member_shape(self):
        return self.ensemble.member_shape

    def read_members(self, indices):
        if max(indices) >= self.fail_after:
            raise OSError("simulated read failure")
        return self.ensemble.read_members(indices)


@pytest.mark.parametrize("target", ["ens.npz", "members"])
def test_failed_write_leaves_previous_output_and_no_partial_files(tmp_path, ensemble, target):
    path = write_ensemble(ensemble, tmp_path / target)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(OSError, match="simulated"):
        write_ensemble(FailingStore(ensemble, fail_after=10), path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == before
    assert_same_ensemble(read_ensemble(path), ensemble)


def test_existing_output_needs_overwrite_and_unwritable_folder_is_named(tmp_path, ensemble):
    path = write_ensemble(ensemble, tmp_path / "ens.npz")
    with pytest.raises(SenseError, match="already exists"):
        write_ensemble(ensemble, path)
    smaller = ensemble.subset([0, 1])
    write_ensemble(smaller, path, overwrite=True)
    assert len(read_ensemble(path)) == 2
    with pytest.raises(SenseError, match="does not exist"):
        write_ensemble(ensemble, tmp_path / "nowhere" / "x.npz")


def test_member_files_are_listed_in_natural_order(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    for name in ("m10", "m2", "m1"):
        np.save(folder / f"{name}.npy", np.zeros((2, 2)))
    assert [p.stem for p in list_member_files(folder)] == ["m1", "m2", "m10"]


def test_written_outputs_get_the_usual_permissions(tmp_path, ensemble):
    mask = os.umask(0o022)
    try:
        npz = write_ensemble(ensemble, tmp_path / "ens.npz")
        folder = write_ensemble(ensemble, tmp_path / "members")
    finally:
        os.umask(mask)
    assert npz.stat().st_mode & 0o777 == 0o644
    assert folder.stat().st_mode & 0o777 == 0o755


def test_multiblock_keeps_every_class_name_when_few_members_are_labeled(tmp_path):
    """Members converted to VTK carry the ensemble's class list, so reading back a subset whose
    labeled members cover only some classes keeps the real names (not ``class_2``...)."""
    from sense_core.io.vti import composite_images, images_to_ensemble, store_to_multiblock

    ensemble = Ensemble(
        np.zeros((4, 1, 3, 3), np.float32),
        labels=[0, UNLABELED, 1, UNLABELED],
        class_names=["calm", "wavy", "storm", "surge"],
        member_ids=["a", "b", "c", "d"],
    )
    back = images_to_ensemble(composite_images(store_to_multiblock(ensemble)))
    assert list(back.class_names) == ["calm", "wavy", "storm", "surge"]
    np.testing.assert_array_equal(back.labels, ensemble.labels)
    folder = write_ensemble(ensemble, tmp_path / "members")
    from vtkmodules.vtkIOXML import vtkXMLImageDataReader

    from sense_core.io.vti import image_class_names

    reader = vtkXMLImageDataReader()
    reader.SetFileName(str(folder / "a.vti"))
    reader.Update()
    assert image_class_names(reader.GetOutput()) == ["calm", "wavy", "storm", "surge"]
