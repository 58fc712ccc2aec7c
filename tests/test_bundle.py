"""Download bundle (samdemo.bundle) and the CLI's --bundle / --replay."""

import csv
import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from samdemo.bundle import read_settings, write_bundle

SETTINGS = {"model": "sam-small", "attack": "mask", "eps": 4.0, "steps": 2, "seed": 3, "generator": "pgd",
            "point": [[10.0, 12.0]], "image": "/somewhere/in.png"}


def test_bundle_contents_round_trip(tmp_path, rng):
    clean = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    adversarial = clean ^ 1
    mask = np.zeros((20, 30), bool)
    mask[2:5, 3:9] = True
    path = write_bundle(tmp_path / "b.zip", clean, adversarial, {"your prompt/clean": mask},
                        [["prompt", "IoU"], ["point", 0.5]], SETTINGS)
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["adversarial.png", "clean.png", "masks/your_prompt_clean.png",
                                              "settings.json", "table.csv"]
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(archive.read("adversarial.png")))), adversarial)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(archive.read("masks/your_prompt_clean.png")))),
                                      mask.astype(np.uint8) * 255)
        assert list(csv.reader(io.StringIO(archive.read("table.csv").decode()))) == [["prompt", "IoU"], ["point", "0.5"]]
        assert json.loads(archive.read("settings.json"))["image"] == "clean.png"
    settings = read_settings(path)  # from the zip: the clean image is extracted next to it
    np.testing.assert_array_equal(np.asarray(Image.open(settings["image"])), clean)
    assert settings | {"image": None} == SETTINGS | {"image": None}


def test_settings_file_checks(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps(SETTINGS | {"image": "in.png"}))
    assert read_settings(tmp_path / "s.json")["image"] == tmp_path / "in.png"  # relative to the JSON
    (tmp_path / "bad.json").write_text(json.dumps(SETTINGS | {"colour": 1}))
    with pytest.raises(ValueError, match="unknown keys colour"):
        read_settings(tmp_path / "bad.json")
    (tmp_path / "short.json").write_text(json.dumps({"image": "in.png"}))
    with pytest.raises(ValueError, match="missing model"):
        read_settings(tmp_path / "short.json")
    (tmp_path / "nojson.json").write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        read_settings(tmp_path / "nojson.json")


def test_cli_replay_reproduces_the_attack(tmp_path, capsys, monkeypatch):
    """--bundle then --replay, on a tiny seeded engine standing in for sam-small (same weights each load)."""
    import samdemo.factory
    from samdemo.attacks.cli import main
    from tests.conftest import tiny_engine

    monkeypatch.setattr(samdemo.factory, "load_engine", lambda name, weights=None, frozen=False, **k: tiny_engine("sam"))

    image = np.zeros((64, 80, 3), np.uint8)
    image[10:40, 20:60] = (200, 60, 40)
    Image.fromarray(image).save(tmp_path / "in.png")
    assert main(["--image", str(tmp_path / "in.png"), "--out", str(tmp_path / "adv.png"), "--attack", "mask",
                 "--eps", "4", "--steps", "2", "--seed", "7", "--point", "40", "25", "--negative-point", "5", "5",
                 "--bundle", str(tmp_path / "run.zip")]) == 0
    assert "bundle ->" in capsys.readouterr().out
    assert read_settings(tmp_path / "run.zip")["negative_point"] == [[5.0, 5.0]]
    original = np.asarray(Image.open(tmp_path / "adv.png"))
    # another point on the command line is replaced by the bundle's
    assert main(["--replay", str(tmp_path / "run.zip"), "--out", str(tmp_path / "replayed.png"),
                 "--point", "1", "1"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "replayed.png")), original)
    with zipfile.ZipFile(tmp_path / "run.zip") as archive:
        archive.extractall(tmp_path / "unzipped")
        assert "masks/your-prompt-adversarial.png" in archive.namelist()
    assert main(["--replay", str(tmp_path / "unzipped" / "settings.json"), "--out", str(tmp_path / "again.png")]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "again.png")), original)
    assert main(["--out", str(tmp_path / "x.png")]) == 2
    assert "--image" in capsys.readouterr().err
    assert main(["--image", str(tmp_path / "in.png"), "--out", str(tmp_path / "x.png"), "--target", "robust"]) == 2
    assert "--adapter" in capsys.readouterr().err
