"""The ACL user the README tells a deployment to create may run every command Conveyor's Lua
scripts call. A script runs with its caller's permissions, so a command missing from that
list fails the script (NOPERM) only where such a user is set up, and only on the path that
calls it; here it fails at once, naming the command and the script."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = [
    *sorted((ROOT / "src/adapters/redis_queue/lua").rglob("*.lua")),
    *sorted((ROOT / "src/adapters/redis_schedules/lua").rglob("*.lua")),
]
_CALL = re.compile(r"redis\.p?call\(\s*'([A-Za-z|]+)'")


def readme_rule() -> set[str]:
    """The commands the README's `ACL SETUSER conveyor ...` block grants."""
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("ACL SETUSER conveyor") :]
    block = block[: block.index("```")]
    return {word[1:].lower() for word in block.split() if word.startswith("+")}


def called() -> dict[str, set[str]]:
    """Each command the scripts call, with the scripts that call it."""
    found: dict[str, set[str]] = {}
    for script in SCRIPTS:
        for command in _CALL.findall(script.read_text()):
            found.setdefault(command.lower(), set()).add(script.name)
    return found


def test_the_scripts_are_read() -> None:
    commands = called()
    assert len(SCRIPTS) > 40
    assert {"hmget", "zadd", "evalsha"} & commands.keys() == {"hmget", "zadd"}


def test_the_readme_acl_user_may_run_every_command_a_script_calls() -> None:
    granted = readme_rule()
    missing = {command: sorted(scripts) for command, scripts in called().items()}
    missing = {command: scripts for command, scripts in missing.items() if command not in granted}
    assert not missing, f"add to the README's ACL rule (and test_redis_acl.py): {missing}"
