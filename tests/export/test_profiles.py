"""kercr.export.profiles: export profile files (which formats, which quantization) and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kercr.export import ExportError, load_profile

REPO = Path(__file__).resolve().parents[2]


def test_a_profile_gives_its_options_without_the_description(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('description = "edge"\nformats = ["tflite"]\nquantize = ["int8", "none"]\ntile = 128\n'
                    "fpr = 1\ntta = false\n")
    assert load_profile(path) == {"formats": ["tflite"], "quantize": ["int8", "none"], "tile": 128, "fpr": 1,
                                  "tta": False}
    (tmp_path / "p.json").write_text(json.dumps({"formats": ["savedmodel"], "seed": 3}))
    assert load_profile(tmp_path / "p.json") == {"formats": ["savedmodel"], "seed": 3}


@pytest.mark.parametrize("name, text, message", [
    ("p.toml", "tile = true\n", r"tile = True should be a int"),
    ("p.toml", "formats = [\"tflite\", 2]\n", r"formats = \['tflite', 2\] should be a list of strings"),
    ("p.toml", "tta = 1\n", r"tta = 1 should be a bool"),
    ("p.toml", "formats = [\n", r"is not valid TOML"),
    ("p.json", "[1, 2]", r"must be a table of options"),
    ("p.json", "{", r"is not valid JSON"),
])
def test_a_bad_profile_is_named(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ExportError, match=f"profile {path}.*{message}"):
        load_profile(path)


def test_shipped_profiles_are_valid():
    names = sorted(p.name for p in (REPO / "export").glob("*.toml"))
    assert {"serving.toml", "edge.toml", "cpu-fast.toml"} <= set(names)
    assert load_profile(REPO / "export" / "edge.toml")["quantize"][0] == "int8"
    assert load_profile(REPO / "export" / "serving.toml")["formats"] == ["savedmodel"]


def test_profile_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('formats = ["tflite"]\nquantise = ["int8"]\n')
    with pytest.raises(ExportError, match="unknown key"):
        load_profile(bad)
    bad.write_text("tile = 'big'\n")
    with pytest.raises(ExportError, match="tile"):
        load_profile(bad)
    with pytest.raises(ExportError, match="cannot read profile"):
        load_profile(tmp_path / "missing.toml")

