"""Progress output: throttled on a terminal, one line per finished job in a non-tty log."""

from __future__ import annotations

import io

from pyro_clip.cli import main
from pyro_clip.utils.progress import progress_bar, track
from tests.conftest import TINY


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_non_tty_log_gets_one_line_per_job_and_no_carriage_returns():
    log = io.StringIO()
    bar = progress_bar(total=5000, desc="coop", stream=log)
    for i in range(5000):
        bar.step(loss=1.0 / (i + 1))
    bar.close("loss 0.0002")
    text = log.getvalue()
    assert "\r" not in text
    assert text.count("\n") == 1 and text.startswith("coop: done, 5000/5000 it in ")
    assert text.rstrip().endswith("loss 0.0002")


def test_terminal_redraws_are_throttled():
    term = _Terminal()
    bar = progress_bar(total=5000, desc="coop", stream=term)
    for i in range(5000):
        bar.step(loss=1.0 / (i + 1))
    bar.close()
    # unthrottled, every step (and every set_postfix) redraws: > 5000 carriage returns
    assert 0 < term.getvalue().count("\r") < 200


def test_disabled_bar_prints_nothing():
    log = io.StringIO()
    assert list(track(range(10), desc="x", enabled=False)) == list(range(10))
    with progress_bar(total=3, stream=log, enabled=False) as bar:
        bar.update(3)
    assert log.getvalue() == ""


def test_run_with_non_tty_stderr_writes_few_lines(tmp_path, capsys):
    """A whole fit with progress on and stderr captured (not a terminal): no bar floods."""
    out = tmp_path / "run"
    assert main(["fit", "--method", "clip-adapter", "--backbone", TINY, "--shots", "4",
                 "--no-eval-datasets", "--opt", "epochs=20", "--opt", "batch_size=4",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert any(line.startswith("clip-adapter: done, 200/200 it") for line in lines), err
    assert len(lines) < 15, err
