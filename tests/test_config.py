"""One source of defaults: the schema, the shipped config.yaml, the option dataclasses and
config/README.md state the same defaults; the config layer stays light."""

import dataclasses
import re
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from tiltflow.workflow import config as wconfig

SCHEMA = yaml.safe_load((REPO / "config/schemas/config.schema.yaml").read_text())
SHIPPED = yaml.safe_load((REPO / "config/config.yaml").read_text())


def schema_leaves(schema=SCHEMA, prefix=""):
    """Dotted key -> property schema of every leaf of the config schema."""
    out = {}
    for name, prop in schema["properties"].items():
        key = f"{prefix}{name}"
        if prop.get("type") == "object" and "properties" in prop:
            out.update(schema_leaves(prop, key + "."))
        else:
            out[key] = prop
    return out


LEAVES = schema_leaves()
SCIENCE_KEYS = sorted(k for k in LEAVES if k != "tiltseries")


def lookup(doc, key):
    for part in key.split("."):
        doc = doc[part]
    return doc


def field_default(cls, name):
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    return field.default


def test_every_key_has_a_description_and_a_default():
    for key, prop in LEAVES.items():
        assert prop.get("description"), key
        assert "default" in prop, key


@pytest.mark.parametrize("key", SCIENCE_KEYS)
def test_schema_config_and_dataclass_defaults_agree(key):
    default = LEAVES[key]["default"]
    assert lookup(SHIPPED, key) == default, f"config/config.yaml {key}"
    assert key in wconfig.OPTION_FIELDS, f"{key} lands in no option dataclass"
    cls, name = wconfig.OPTION_FIELDS[key]
    assert field_default(cls, name) == default, f"{cls.__name__}.{name}"


def test_shipped_config_has_exactly_the_schema_keys():
    def leaves(doc, prefix=""):
        out = set()
        for k, v in doc.items():
            out |= leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
        return out

    assert leaves(SHIPPED) == set(LEAVES)


def readme_defaults():
    """Dotted key -> default text from the table of config/README.md (rows may name several keys)."""
    out = {}
    for line in (REPO / "config/README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        keys = re.findall(r"`([^`]+)`", cells[0])
        values = re.findall(r"`([^`]+)`", cells[1])
        if not keys or len(keys) != len(values):
            continue
        section = keys[0].rsplit(".", 1)[0] + "." if "." in keys[0] else ""
        for k, v in zip(keys, values):
            out[k if "." in k or not section else section + k] = v
    return out


def parse(text):
    """A README cell's value: YAML, with plain floats such as 1e-10 (YAML 1.1 reads those as text)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def test_config_readme_states_the_schema_defaults():
    documented = readme_defaults()
    for key, prop in LEAVES.items():
        assert key in documented, f"config/README.md does not list {key}"
        assert parse(documented[key]) == prop["default"], key


def test_options_from_an_empty_config_are_the_defaults():
    from tiltflow.options import AlignOptions, CoarseOptions, ReconOptions

    assert wconfig.align_options({}) == AlignOptions()
    assert wconfig.coarse_options({}) == CoarseOptions()
    assert wconfig.recon_options({}) == ReconOptions()
    assert wconfig.recon_options({"reconstruct": {"thickness": 64, "z_offset": 3.0}}) == ReconOptions(
        thickness_px=64, z_offset_px=3.0)


def test_the_config_layer_imports_no_heavy_module():
    code = ("import sys; import tiltflow.workflow.config, tiltflow.workflow.sheet; "
            "print(sorted(m for m in ('numba', 'scipy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
