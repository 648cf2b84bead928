"""Every expected user mistake on the command line is one line
`gpucnn <command>: error: <what, and what to do>` on stderr with exit status 2,
before any training starts (issue 15, item 2)."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpucnn import backend, cli, serialization

pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "digits", "--subset", "120", "--model", "lenet5", "--device", "cpu", "--no-progress",
        "--val-split", "0"]


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def run_cli(argv, capsys):
    """(exit status, stderr, stdout) of cli.main, argparse's SystemExit included."""
    try:
        rc = cli.main(argv)
    except SystemExit as exc:
        rc = exc.code
    captured = capsys.readouterr()
    return rc, captured.err, captured.out


def assert_one_line_error(command, rc, err, *expected):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gpucnn {command}: error: "), err
    for text in expected:
        assert text in lines[0], (text, lines[0])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real 1-epoch lenet5 checkpoint on the digits."""
    path = tmp_path_factory.mktemp("ckpt") / "lenet5.ckpt.npz"
    assert cli.main(["train", *TINY, "--epochs", "1", "--checkpoint", str(path)]) == 0
    return path


@pytest.mark.parametrize("argv, expected", [
    (["--val-split", "1.5"], ["argument --val-split: must be in [0, 1), got 1.5"]),
    (["--val-split", "-0.1"], ["argument --val-split: must be in [0, 1)"]),
    (["--lr", "-1"], ["argument --lr: must be > 0, got -1"]),
    (["--lr", "0"], ["argument --lr: must be > 0, got 0"]),
    (["--lr", "nan"], ["argument --lr: must be a finite number"]),
    (["--batch-size", "0"], ["argument --batch-size: must be >= 1, got 0"]),
    (["--epochs", "0"], ["argument --epochs: must be >= 1, got 0"]),
    (["--epochs", "two"], ["argument --epochs: expected an integer, got 'two'"]),
    (["--dropout", "1"], ["argument --dropout: must be in [0, 1)"]),
    (["--model", "resnet9000"], ["argument --model: invalid choice: 'resnet9000'"]),
    (["--no-such-option"], ["unrecognized arguments: --no-such-option"]),
])
def test_argparse_errors_are_one_line(argv, expected, capsys):
    rc, err, out = run_cli(["train", *argv], capsys)
    assert_one_line_error("train", rc, err, *expected, "see gpucnn train --help")
    assert "usage:" not in err and out == ""


def test_unknown_command_is_one_line(capsys):
    rc, err, _ = run_cli(["trian"], capsys)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("gpucnn: error: argument COMMAND: invalid choice")


def test_data_dir_errors(tmp_path, capsys):
    rc, err, out = run_cli(["train", "--data-dir", str(tmp_path / "nope")], capsys)
    assert_one_line_error("train", rc, err, "--data-dir", "nope: no such file or directory")
    rc, err, out = run_cli(["train", "--dataset", "mnist", "--data-dir", str(tmp_path)], capsys)
    assert_one_line_error("train", rc, err, "cannot load dataset 'mnist'", str(tmp_path), "check --dataset")
    rc, err, out = run_cli(["train", "--dataset", "npz"], capsys)
    assert_one_line_error("train", rc, err, "needs --data-dir")
    assert "epoch" not in out


def test_resume_of_missing_random_text_and_foreign_files(tmp_path, capsys):
    (tmp_path / "random.bin").write_bytes(np.random.default_rng(0).integers(0, 256, 300, np.uint8).tobytes())
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    np.savez(tmp_path / "foreign.npz", w=np.ones(3))
    serialization.save({"w": np.ones(3)}, tmp_path / "state.npz")  # a gpucnn file, not a checkpoint
    for name, expected in (("missing.npz", "no such file"), ("random.bin", "random.bin"),
                           ("notes.txt", "is a text file"), ("foreign.npz", "not a gpucnn file"),
                           ("state.npz", "not a training checkpoint")):
        rc, err, out = run_cli(["train", *TINY, "--resume", str(tmp_path / name)], capsys)
        assert_one_line_error("train", rc, err, "--resume", expected)
        assert "epoch" not in out, name


def test_resume_refuses_another_model_dataset_or_no_more_epochs(checkpoint, tmp_path, capsys):
    rc, err, out = run_cli(["train", *TINY, "--model", "lenet_bn", "--resume", str(checkpoint)], capsys)
    assert_one_line_error("train", rc, err, "holds a 'lenet5' model, but --model is 'lenet_bn'",
                          "pass --model lenet5")
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x=np.zeros((20, 1, 8, 8), np.float32), y=np.arange(20) % 10)
    argv = ["train", "--dataset", "npz", "--data-dir", str(npz), "--model", "lenet5", "--device", "cpu",
            "--resume", str(checkpoint)]
    rc, err, out = run_cli(argv, capsys)
    assert_one_line_error("train", rc, err, "was trained on 'digits', but this run loads 'npz'")
    rc, err, out = run_cli(["train", *TINY, "--epochs", "1", "--resume", str(checkpoint)], capsys)
    assert_one_line_error("train", rc, err, "already trained 1 epoch(s)", "--epochs 2 or more")


def test_unwritable_outputs(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for option, path, expected in (("--checkpoint", tmp_path, "it is a directory"),
                                   ("--metrics-out", blocker / "m.json", "cannot create the folder"),
                                   ("--plot", blocker / "sub" / "p.png", "cannot create the folder")):
        rc, err, out = run_cli(["train", *TINY, option, str(path)], capsys)
        assert_one_line_error("train", rc, err, expected, str(path))
        assert "epoch" not in out
    rc, err, _ = run_cli(["search", "--json-out", str(tmp_path)], capsys)
    assert_one_line_error("search", rc, err, "it is a directory")


@pytest.mark.skipif(backend.gpu_available(), reason="needs a machine without a usable GPU")
def test_gpu_without_a_gpu(capsys):
    rc, err, _ = run_cli(["train", "--device", "gpu"], capsys)
    assert_one_line_error("train", rc, err, "needs a GPU", "use --device cpu")
    rc, err, _ = run_cli(["bench", "--device", "gpu"], capsys)
    assert_one_line_error("bench", rc, err, "needs a GPU", "use --device cpu")


def test_other_commands(capsys):
    rc, err, _ = run_cli(["search", "--k-folds", "1"], capsys)
    assert_one_line_error("search", rc, err, "argument --k-folds: must be >= 2")
    rc, err, _ = run_cli(["search", "--lr", "0.1", "-3"], capsys)
    assert_one_line_error("search", rc, err, "argument --lr: must be > 0")
    rc, err, _ = run_cli(["summary", "--dataset-shape", "1", "28", "27"], capsys)
    assert_one_line_error("summary", rc, err, "square images, got 28x27")
    rc, err, _ = run_cli(["summary", "--num-classes", "0"], capsys)
    assert_one_line_error("summary", rc, err, "argument --num-classes: must be >= 1")
    rc, err, _ = run_cli(["bench", "--repeats", "0"], capsys)
    assert_one_line_error("bench", rc, err, "argument --repeats: must be >= 1")
    rc, err, out = run_cli(["train", "--dataset", "digits", "--subset", "3", "--val-split", "0.5"], capsys)
    assert_one_line_error("train", rc, err, "cannot split the training set", "leaves an empty split",
                          "larger --subset")
    assert "epoch" not in out
    rc, err, _ = run_cli(["train", "--early-stopping", "2", "--val-split", "0"], capsys)
    assert_one_line_error("train", rc, err, "--early-stopping needs a validation split")


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCNN_DEBUG", "1")
    from gpucnn.commands.errors import CommandError
    with pytest.raises(CommandError, match="no such file or directory"):
        cli.main(["train", "--data-dir", str(tmp_path / "nope")])


def test_version_and_a_real_process():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "gpucnn", "--version"], capture_output=True, text=True, env=env)
    from gpucnn import __version__
    assert out.returncode == 0 and out.stdout.strip() == f"gpucnn {__version__}"
    out = subprocess.run([sys.executable, "-m", "gpucnn", "train", "--batch-size", "0"], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == "gpucnn train: error: argument --batch-size: must be >= 1, got 0 (see gpucnn train --help)\n"


@pytest.mark.parametrize("command", list(_subparsers(cli.build_parser())))
def test_every_option_has_help_and_shows_its_default(command):
    """Options with a default show it (the CLI's formatter appends '(default: X)');
    options without one (None) must say in their help what happens when omitted."""
    sub = _subparsers(cli.build_parser())[command]
    formatter = sub._get_formatter()
    for action in sub._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or "-h" in action.option_strings:
            continue
        assert action.help, f"gpucnn {command} {action.option_strings[0]} has no help text"
        shown = formatter._get_help_string(action)
        if not isinstance(action, argparse._StoreTrueAction) and not action.required:
            assert "default" in shown.lower() or "(0 = none)" in shown, \
                f"gpucnn {command} {action.option_strings[0]}: help does not show the default: {shown!r}"


def test_help_shows_defaults():
    text = " ".join(_subparsers(cli.build_parser())["train"].format_help().split())
    assert "images per mini-batch (default: 128)" in text and "(default: adam)" in text


def test_search_description_is_complete():
    text = " ".join(_subparsers(cli.build_parser())["search"].description.split())
    for word in ("random", "grid", "--k-folds", "--ensemble", "--json-out", "validation accuracy"):
        assert word in text
