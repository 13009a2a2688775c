from __future__ import annotations

import pytest
from torch import nn

from litlab.errors import ConfigError
from litlab.evolution import ParameterFilter

from .conftest import tiny_model


def names(**kwargs) -> list[str]:
    return [name for name, _ in ParameterFilter(**kwargs).resolve(tiny_model())]


def test_glob_regex_and_module_type_select_by_name_and_type():
    assert names(select="blocks.*.mlp.fc2.weight") == ["blocks.0.mlp.fc2.weight", "blocks.1.mlp.fc2.weight"]
    assert names(select=("head.*", "blocks.1.norm.bias")) == ["blocks.1.norm.bias", "head.weight", "head.bias"]
    assert names(regex=r"fc1\.bias$") == ["blocks.0.mlp.fc1.bias", "blocks.1.mlp.fc1.bias"]
    norms = ["blocks.0.norm.weight", "blocks.1.norm.weight"]
    assert names(module_type=nn.LayerNorm, select="*.weight") == norms
    assert names(module_type="LayerNorm", select="*.weight") == norms
    assert names(module_type="torch.nn.LayerNorm", regex="weight") == norms
    assert len(names()) == len(list(tiny_model().parameters()))


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"select": "blocks.*.attn.*"}, "select='blocks.*.attn.*'"),
    ({"regex": "^encoder"}, "regex='^encoder'"),
    ({"module_type": nn.Conv2d}, "module_type="),
    ({"select": "head.*", "regex": "norm"}, "regex='norm'"),
])
def test_empty_match_names_the_filters(kwargs, named):
    with pytest.raises(ConfigError, match="selects no parameter") as info:
        names(**kwargs)
    assert named in str(info.value)
    assert "blocks.0.norm.weight" in str(info.value)  # shows what the names look like


def test_invalid_filters_are_config_errors():
    with pytest.raises(ConfigError, match="regex"):
        names(regex="(")
    with pytest.raises(ConfigError, match="module_type"):
        names(module_type=int)
    with pytest.raises(ConfigError, match="cannot import"):
        names(module_type="torch.nn.NoSuchLayer")
