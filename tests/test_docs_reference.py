"""docs/config.md and docs/api.md are what tools/docs_reference.py writes from the code
now: a config key, a signature or a docstring changed without the page fails here."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "tools" / "docs_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page, make", [("config.md", "config_markdown"), ("api.md", "api_markdown")])
def test_the_committed_page_is_what_the_generator_writes(page, make):
    text = getattr(_generator(), make)()
    assert (ROOT / "docs" / page).read_text() == text, f"docs/{page} is stale: run python tools/docs_reference.py"


def test_every_config_key_has_a_row_and_a_description():
    import dataclasses

    from difforge.config import SECTIONS

    gen = _generator()
    text = gen.config_markdown()
    for section, cls in SECTIONS.items():
        notes = gen.field_comments(cls)
        for f in dataclasses.fields(cls):
            assert f"| `{section}.{f.name}` |" in text
            assert notes.get(f.name), f"{section}.{f.name} has no comment in config.py to describe it"


def test_every_documented_function_has_a_docstring():
    assert "(no docstring)" not in _generator().api_markdown()
