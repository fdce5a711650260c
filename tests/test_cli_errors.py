"""The CLI's error policy: a user error exits 2 with one paragraph (a traceback only with --debug); any other
exception exits 1 with its traceback and a request to report it."""

import errno

import pytest
from test_cli import cli

from hintdistill import __version__
from hintdistill import cli as cli_module
from hintdistill.cli import main
from hintdistill.errors import CheckpointError, DataError, ShapeError


def test_random_bytes_recipe_in_a_fresh_process(tmp_path):
    (tmp_path / "r.yaml").write_bytes(bytes(range(128, 256)))
    result = cli("run", "r.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == ("error: recipe r.yaml is not UTF-8 text (byte 0x80 at offset 0); is it the right "
                             "file? A recipe is a YAML text file, see recipes/\n")
    debug = cli("run", "r.yaml", "--debug", cwd=tmp_path)
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "UnicodeDecodeError" not in debug.stderr
    assert debug.stderr.endswith(result.stderr)


def raising(exc):
    def command(args):
        raise exc
    return command


@pytest.mark.parametrize("exc, message", [
    (DataError("JPEGImages/ is empty"), "error: JPEGImages/ is empty\n"),
    (ShapeError("guided is [B, 197, 768]"), "error: guided is [B, 197, 768]\n"),
    (CheckpointError("model.pt cannot be read"), "error: model.pt cannot be read\n"),
    (OSError(errno.ENOSPC, "No space left on device", "runs/x/checkpoint.pt"),
     "error: cannot use runs/x/checkpoint.pt: No space left on device. Fix: free disk space or write the run "
     "elsewhere with --output-dir; the last complete checkpoint is kept and rerunning the same command resumes "
     "from it.\n"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/x"),
     "error: cannot use /data/x: Permission denied. Fix: check the file's permissions, or choose another path.\n"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "img.png"),
     "error: cannot use img.png: No such file or directory. Fix: check the path (a relative path is taken from "
     "the current folder).\n"),
])
def test_user_errors_exit_2_with_one_paragraph(monkeypatch, capsys, exc, message):
    monkeypatch.setattr(cli_module, "cmd_models", raising(exc))
    assert main(["models"]) == 2
    assert capsys.readouterr().err == message
    for argv in (["models", "--debug"], ["--debug", "models"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("Traceback") and err.endswith(message)


@pytest.mark.parametrize("exc", [RuntimeError("index out of range"), OSError(errno.EIO, "Input/output error"),
                                 KeyError("x")])
def test_internal_errors_exit_1_with_traceback_and_a_request_to_report(monkeypatch, capsys, exc):
    monkeypatch.setattr(cli_module, "cmd_models", raising(exc))
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and type(exc).__name__ in err
    assert f"internal error in hintdistill {__version__}" in err and "Please report it" in err


def test_argparse_errors_keep_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run"])
    assert info.value.code == 2 and "the following arguments are required: recipe" in capsys.readouterr().err
