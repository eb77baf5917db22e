"""The progress line: redrawn on a terminal, throttled into files and pipes."""

import io

from opd_jax.training.logging import Progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_a_file_gets_a_line_per_interval_and_the_last_step():
    out = io.StringIO()
    p = Progress(5, 0, stream=out, every_s=3600.0)
    for step in range(1, 6):
        line = p.update(step, 0.5, 100.0)
    assert out.getvalue() == line + "\n" and line.startswith("step 5/5 | loss 0.5000")
    out = io.StringIO()
    p = Progress(3, 0, stream=out, every_s=0.0)
    for step in range(1, 4):
        p.update(step, 1.0, 10.0)
    assert [x.split(" |")[0] for x in out.getvalue().splitlines()] == ["step 1/3", "step 2/3",
                                                                     "step 3/3"]


def test_a_terminal_line_is_redrawn_in_place():
    out = _Tty()
    p = Progress(2, 0, stream=out)
    p.update(1, 1.0, 10.0)
    p.update(2, 1.0, 10.0)
    text = out.getvalue()
    assert text.count("\r") == 2 and text.count("\n") == 1 and text.endswith("\n")


def test_disabled_writes_nothing():
    out = io.StringIO()
    Progress(1, 0, enabled=False, stream=out).update(1, 1.0, 1.0)
    assert out.getvalue() == ""


def test_the_default_stream_is_stderr_at_construction_not_at_import(monkeypatch):
    """A Progress made after sys.stderr was replaced (pytest's capture, a notebook) writes to the
    current stderr, not to the one of import time (which may be closed by then)."""
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    Progress(1, 0, every_s=0.0).update(1, 1.0, 1.0)
    assert out.getvalue().startswith("step 1/1")
