"""The README's "From Python" example runs as written (against the reduced quickstart's run, so
that it takes seconds), and its commented results are what the code returns."""

import ast
import re

import keel

from conftest import REPO


def _readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs(quickstart_run, monkeypatch):
    calls = []

    def fake_run(path, overrides=None, **kwargs):
        # The README's pipeline and overrides must stay valid...
        keel.validate(REPO / path, overrides)
        calls.append((path, overrides))
        # ...and the rest of the example reads the reduced quickstart's directory.
        return quickstart_run

    monkeypatch.setattr(keel, "run", fake_run)
    code = _readme_example()
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert calls == [("pipelines/quickstart.yaml", {"stages.grpo_kl.with.beta": 0.1})]
    # Lines ending in `# [1.0]` show what they return.
    checked = 0
    for line in code.splitlines():
        m = re.match(r"^(keel\..*?)\s+#\s*(\[.*\])\s*$", line)
        if m:
            assert eval(m.group(1), namespace) == ast.literal_eval(m.group(2)), line
            checked += 1
    assert checked == 2
