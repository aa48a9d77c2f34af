"""The user-error types, the one name lookup, and the atomic writer."""

import os

import pytest

from pyro_vae.errors import (
    CheckpointError, ConfigError, DataError, RunError, UserError, lookup,
)
from pyro_vae.files import atomic_write


def test_user_errors_share_one_base_that_is_not_a_value_error():
    assert not issubclass(UserError, ValueError)  # internal ValueErrors keep their tracebacks
    for cls in (ConfigError, DataError, RunError, CheckpointError):
        assert issubclass(cls, UserError)
    assert issubclass(ConfigError, ValueError)  # a bad argument value, as library callers expect


def test_lookup_returns_the_entry_or_names_every_valid_choice():
    registry = {"a": 1, "bb": 2}
    assert lookup(registry, "--thing", "bb") == 2
    assert lookup(("x", "y"), "mode", "y") == "y"  # a sequence of names: the name itself
    with pytest.raises(ConfigError) as info:
        lookup(registry, "--thing", "c")
    assert str(info.value) == "unknown --thing 'c'; choose one of: a, bb"
    with pytest.raises(DataError) as info:
        lookup(registry, "dataset", "c", error=DataError, alternative="a file")
    assert str(info.value) == "unknown dataset 'c'; choose one of: a, bb, or a file"


def test_atomic_write_replaces_the_file_only_when_the_block_ends(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")
    with atomic_write(str(path)) as f:
        f.write("new")
        assert path.read_text() == "old"  # not yet
    assert path.read_text() == "new"
    with pytest.raises(RuntimeError):
        with atomic_write(str(path)) as f:
            f.write("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["f.json"]  # the temporary file is cleaned up
    with atomic_write(str(tmp_path / "b.bin"), "wb") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
