"""What the docs promise: every docs/ file the code points to exists, README's recipe excerpt is the committed
quickstart recipe; and `omnifuse quickstart` is a thin verb over the library function
`omnifuse.quickstart.run_quickstart` (checked with a stand-in: the real pipeline trains for minutes)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from types import SimpleNamespace

import omnifuse
from omnifuse.cli import main, render
from omnifuse.recipes import QUICKSTART

ROOT = Path(__file__).resolve().parents[2]
SRC = Path(omnifuse.__file__).resolve().parent
DOC_REF = re.compile(r"\bdocs/[\w./-]*\w")


def doc_references() -> dict[str, list[str]]:
    """Every `docs/...` path named in the package's code, messages, templates and shipped recipes."""
    refs: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*")):
        if path.suffix not in (".py", ".html", ".yaml", ".md", ".txt") or "__pycache__" in path.parts:
            continue
        for ref in DOC_REF.findall(path.read_text(encoding="utf-8")):
            refs.setdefault(ref, []).append(str(path.relative_to(SRC)))
    return refs


def test_every_docs_reference_in_the_code_exists():
    refs = doc_references()
    assert "docs/recipes.md" in refs  # the recipe loader's "see docs/recipes.md" is found by the walk
    missing = {ref: where for ref, where in refs.items() if not (ROOT / ref).exists()}
    assert not missing, f"docs named in src/ that do not exist: {missing}"


def test_readme_recipe_excerpt_is_the_committed_quickstart_recipe():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Recipes") :]
    excerpt = section[section.index("```yaml\n") + len("```yaml\n") :]
    excerpt = excerpt[: excerpt.index("```\n")]
    assert excerpt == QUICKSTART.read_text(encoding="utf-8")


def test_run_quickstart_is_a_library_function():
    from omnifuse.quickstart import CHAT_QUESTIONS, QuickstartResult, run_quickstart

    params = inspect.signature(run_quickstart).parameters
    assert list(params) == ["out_dir", "overrides", "progress", "console", "questions"]
    assert params["questions"].default == CHAT_QUESTIONS
    assert {"run_dir", "outcome", "times", "peak_rss_gb", "report", "image", "chat"} <= set(
        inspect.signature(QuickstartResult).parameters
    )


def test_the_quickstart_verb_calls_the_library_and_prints_its_result(tmp_path, capsys, monkeypatch):
    import omnifuse.quickstart as library
    from omnifuse.quickstart import QuickstartResult

    calls = []
    outcome = SimpleNamespace(
        result=SimpleNamespace(accuracy=0.857, n=1000),
        blind=SimpleNamespace(accuracy=0.507),
        seconds=54.0,
        blind_seconds=62.9,
    )

    def fake(out_dir, overrides, *, progress, console, **kwargs):
        calls.append((Path(out_dir), list(overrides), progress))
        return QuickstartResult(
            Path(out_dir),
            outcome,
            {"training": 477.9, "evaluation": 54.0, "blind evaluation": 62.9},
            1.71,
            Path(out_dir) / "report.html",
            Path("img/0.png"),
            [("what shape is in the image?", "circle")],
        )

    monkeypatch.setattr(library, "run_quickstart", fake)
    monkeypatch.setattr(render, "print_scores", lambda outcome: None)
    run = tmp_path / "qs"
    assert main(["quickstart", "--out", str(run), "--set", "stages.1.steps=2", "--no-progress"]) == 0
    assert calls == [(run, ["stages.1.steps=2"], False)]
    out = capsys.readouterr().out
    for text in ("85.7 % (n=1000)", "50.7 %", "594.8 s", "1.71 GB", str(run / "report.html"), "circle"):
        assert text in out, text
    assert f"omnifuse chat {run} --image img/0.png 'what shape is in the image?'" in out
