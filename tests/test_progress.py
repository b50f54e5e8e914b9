"""``nertron.engine.progress.Progress``: a tqdm bar on stderr with texts/s and tokens/s,
never on stdout, silent when disabled."""
import io
import sys

import pytest

from nertron.engine.progress import Progress


def test_bar_on_stderr_with_total_texts_and_tokens(capsys):
    with Progress(total=10, desc="tagging", mininterval=0) as bar:
        bar.update(texts=4, tokens=1200)
        bar.update(texts=6, tokens=1800)
    assert (bar.texts, bar.tokens) == (10, 3000)
    captured = capsys.readouterr()
    assert captured.out == ""
    last = captured.err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("tagging: 100%") and "10/10" in last
    assert "text/s" in last and "tokens/s" in last


def test_unknown_total_counts_without_percentage(capsys):
    with Progress(mininterval=0) as bar:
        bar.update(texts=3, tokens=30)
    err = capsys.readouterr().err
    assert "3text" in err.replace(" ", "") and "%" not in err


def test_disabled_writes_nothing_but_counts(capsys):
    with Progress(total=5, enabled=False) as bar:
        bar.update(texts=5, tokens=50)
    assert (bar.texts, bar.tokens) == (5, 50)
    assert capsys.readouterr() == ("", "")


def test_never_stdout():
    with pytest.raises(ValueError, match="never writes to stdout"):
        Progress(file=sys.stdout)
    stream = io.StringIO()
    with Progress(total=2, file=stream, mininterval=0) as bar:
        bar.update(texts=2, tokens=10)
    assert "2/2" in stream.getvalue()


@pytest.mark.parametrize("total", [-1, 2.5, True, "3"])
def test_bad_total(total):
    with pytest.raises(ValueError, match="total must be"):
        Progress(total=total, enabled=False)


@pytest.mark.parametrize("stride", [1, 2, 3, 7])
def test_file_progress_total_is_the_lines_read_lines_gives(tmp_path, stride):
    """``file_progress``'s total is the number of lines ``read_lines(path, stride, offset)``
    yields (a rank's share under distributed tagging), counted only when the bar is shown."""
    from nertron.engine.tagger import file_progress, read_lines

    for text in ("", "one", "one\n", "a\nb\nc", "a\nb\nc\n\n", "\n".join(map(str, range(20)))):
        path = tmp_path / "in.txt"
        path.write_text(text)
        for offset in range(stride):
            with file_progress(path, True, stride=stride, offset=offset) as bar:
                assert bar._bar.total == len(list(read_lines(path, stride, offset))), (text, stride, offset)
            assert not file_progress(path, False, stride=stride, offset=offset).enabled
