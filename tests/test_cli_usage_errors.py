"""Click's own usage errors end like every other user error: one `error:` line, exit 2."""

import pytest

from dymo.cli.main import main


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["train", "backbone", "--epochs", "abc"], "--epochs"),
        (["--no-such-option"], "--no-such-option"),
        (["evaluate"], "run"),
        (["predict", "b", "i", "--batch-size", "x"], "--batch-size"),
    ],
)
def test_usage_error_is_one_error_line_and_exit_2(argv, names, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert names in lines[0] and "--help" in lines[0]
    assert "Traceback" not in err and "Usage:" not in err


def test_help_still_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "Usage" in capsys.readouterr().out


def test_abort_exits_130(monkeypatch, capsys):
    import typer

    import dymo.cli.main as cli_main

    fresh = typer.Typer()

    @fresh.command()
    def stop() -> None:
        raise typer.Abort()

    @fresh.command()
    def other() -> None:  # two commands, so the command name is required
        pass

    monkeypatch.setattr(cli_main, "app", fresh)
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["stop"])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip() == "error: interrupted"
