"""The README's usage snippet runs as written (a new user's first copy-and-paste)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_usage_snippet_runs_as_written(capsys):
    text = README.read_text()
    use = text[text.index("## Use"):]
    snippet = re.search(r"```python\n(.*?)```", use, re.S).group(1)
    exec(compile(snippet, str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "ember.explain" in out and "torch.Size([8, 4])" in out
