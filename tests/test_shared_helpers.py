"""The small helpers every module shares (one copy each): an exception as one line, and
numpy/torch values as JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from jigsawkit.errors import ConfigError, one_line
from jigsawkit.json_values import json_default, jsonable, plain


def test_one_line_names_the_type_and_folds_the_message():
    error = ValueError("first  part\n\n  second  \n")
    assert one_line(error) == "ValueError: first part second"
    assert one_line(error, first_line=True) == "ValueError: first part"
    assert one_line(RuntimeError()) == "RuntimeError"


def test_one_line_of_a_user_error_may_leave_out_the_type():
    error = ConfigError(["a.yaml:1:1: x: bad", "a.yaml:2:1: y: worse"])
    assert one_line(error, typed=False) == "a.yaml:1:1: x: bad a.yaml:2:1: y: worse"
    assert one_line(error, first_line=True) == "ConfigError: a.yaml:1:1: x: bad"


def test_plain_values_from_numpy_and_torch():
    assert plain(np.float32(0.5)) == 0.5 and type(plain(np.int64(3))) is int
    assert plain(np.arange(3)) == [0, 1, 2]
    assert plain(torch.tensor(2.5)) == 2.5 and plain(torch.tensor([1, 2])) == [1, 2]
    assert plain("text") == "text" and plain([np.int64(1)]) == [np.int64(1)]


def test_jsonable_keeps_what_json_can_hold():
    value = {"a": np.float64(0.25), "b": [np.int32(2)], "p": Path("x/y"), "n": np.float32("nan")}
    assert jsonable(value) == {"a": 0.25, "b": [2], "p": "x/y", "n": "nan"}
    assert json.dumps({"t": torch.tensor(1.0)}, default=json_default) == '{"t": 1.0}'
    assert math.isinf(float(json_default(np.float32("inf"))))
