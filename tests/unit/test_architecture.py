import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The style guide's limit on a module in src/, Lua scripts included.
MAX_LINES = 400
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent))


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS, "lint-imports is not installed in this environment"
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_contracts_are_kept() -> None:
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_a_domain_module_importing_redis_breaks_the_purity_contract(tmp_path: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    jobs = tmp_path / "src" / "domain" / "jobs.py"
    jobs.write_text("import redis  # noqa\n" + jobs.read_text())
    run = lint_imports(tmp_path)
    assert run.returncode != 0
    assert "Domain is pure" in run.stdout
    assert "domain.jobs -> redis" in run.stdout


def test_no_module_in_src_is_over_the_line_limit() -> None:
    sources = sorted([*ROOT.glob("src/**/*.py"), *ROOT.glob("src/**/*.lua")])
    lines = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in sources}

    assert len(lines) > 50  # the glob found the sources
    assert {path: n for path, n in lines.items() if n > MAX_LINES} == {}
