"""The Lua scripts are assembled from shared fragments: each carries every fragment it calls."""

from __future__ import annotations

import re

from adapters.redis_queue import scripts


def all_scripts() -> list[scripts.Script]:
    return [value for value in vars(scripts).values() if isinstance(value, scripts.Script)]


def test_every_script_defines_each_fragment_function_it_calls() -> None:
    defined_by_fragments = {
        name
        for fragment in scripts._FRAGMENTS
        for name in re.findall(r"local function (\w+)", fragment)
    }
    assert len(all_scripts()) >= 15
    for script in all_scripts():
        defined = set(re.findall(r"local function (\w+)", script.source))
        called = {name for name in defined_by_fragments if re.search(rf"\b{name}\(", script.source)}
        assert called <= defined, (script.name, sorted(called - defined))
