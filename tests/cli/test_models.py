"""``kercr-models`` (kercr.cli.models): the table of architectures, one model's summary, and its errors.

``--help`` without TensorFlow and ``-q``/``-v`` are tested for every script in tests/cli/test_common.py.
"""

from __future__ import annotations

import pytest

from kercr.cli.models import models_main
from kercr.models import list_models


def test_kercr_models_lists_every_architecture_and_summarizes_one(capsys):
    assert models_main(["--skip-large"]) == 0
    table = capsys.readouterr().out
    for name in list_models():
        if name != "transunet_r50_vit_b16":
            assert f"\n{name} " in table, name
    assert "101,473     101,473  +0.00%" in table  # deepcr_2_32 against deepCR's own count
    assert models_main(["deepcr_2_4", "--set", "filters=[2,4]"]) == 0
    assert "Total params" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        models_main(["--set", "filters=[2,4]"])  # an option without an architecture to apply it to
    assert "--set changes one architecture: name it" in capsys.readouterr().err


def test_an_unknown_architecture_is_one_line_naming_the_valid_ones(capsys):
    assert models_main(["resnet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kercr-models: error: ") and err.count("\n") == 1
    assert "resnet" in err and "deepcr_2_4" in err


def test_a_set_option_without_a_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        models_main(["deepcr_2_4", "--set", "filters"])
    assert exit_.value.code == 2
    assert "--set 'filters': expected KEY=VALUE" in capsys.readouterr().err
