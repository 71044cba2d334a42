"""roles/release: meta/argument_specs.yml and defaults/main.yml must agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLE = Path(__file__).resolve().parents[2] / "roles" / "release"
SPECS = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
TASK_FILES = {p.stem for p in (ROLE / "tasks").glob("*.yml")}


def test_every_entry_point_has_a_task_file():
    assert set(SPECS) <= TASK_FILES, f"entry points without a tasks file: {set(SPECS) - TASK_FILES}"


def test_every_public_task_file_is_an_entry_point():
    assert set(SPECS) >= TASK_FILES, f"task files not documented as entry points: {TASK_FILES - set(SPECS)}"


@pytest.mark.parametrize("entry_point", sorted(SPECS))
def test_options_match_defaults(entry_point):
    options = SPECS[entry_point]["options"]
    assert set(options) == set(DEFAULTS), (
        f"only in argument_specs: {set(options) - set(DEFAULTS)}; only in defaults: {set(DEFAULTS) - set(options)}"
    )


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_default_values_agree(name):
    spec = SPECS["main"]["options"][name]
    assert name.startswith("release_"), "public role variables are prefixed with the role name"
    if spec.get("required"):
        return  # defaults only hold a placeholder for required variables
    assert spec.get("default") == DEFAULTS[name], f"{name}: spec default {spec.get('default')!r} != {DEFAULTS[name]!r}"
    if "choices" in spec:
        assert DEFAULTS[name] in spec["choices"]
