"""The README's main job runs end to end (a few steps), and never resumes a stale run."""

import pytest

from opd_jax import demo


def test_demo_runs_and_refuses_a_used_workdir(tmp_path, capsys):
    args = ["--workdir", str(tmp_path / "d"), "--teacher-steps", "3", "--cold-start-steps", "2",
            "--steps", "2"]
    demo.main(args)
    out = capsys.readouterr().out
    for row in ("initial", "after the cold start", "after OPD"):
        assert row in out
    with pytest.raises(SystemExit) as e:
        demo.main(args)
    assert e.value.code == 2 and "is not empty" in capsys.readouterr().err
