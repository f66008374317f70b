"""python -m backbone list / check."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from backbone import CONTRACT_RULES
from backbone.cli import main

N = len(CONTRACT_RULES)

USER_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn
    from backbone import MammothBackbone, check_returnt


    class Good(MammothBackbone):
        def __init__(self, width=6, num_classes=3):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
            self.classifier = nn.Linear(width, num_classes)
            self.feature_dim = width
            self.feature_info = [dict(num_chs=width, reduction=1, module="body")]

        def forward_features(self, x):
            return self.body(x)


    class Lenient(Good):
        def forward(self, x, returnt="out"):
            return super().forward(x, "out" if returnt not in ("features", "both", "full") else returnt)


    def make_good(num_classes=3):
        return Good(num_classes=num_classes)


    def explodes(**kwargs):
        raise RuntimeError("needs a GPU")


    class Only8x8(Good):
        def forward_features(self, x):
            if tuple(x.shape[1:]) != (3, 8, 8):
                raise ValueError(f"expected 3x8x8 inputs, got {tuple(x.shape[1:])}")
            return super().forward_features(x)


    class Frozen(Good):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.requires_grad_(False)


    instance = Good()
    not_a_backbone = 42
    """
)


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "user_nets.py").write_text(USER_MODULE)
    (tmp_path / "syntax_error.py").write_text("class Net(:\n    pass\n")
    (tmp_path / "raises_on_import.py").write_text("1 / 0\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    sys.modules.pop("user_nets", None)
    return tmp_path


def test_list(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_forward(*args: object, **kwargs: object) -> None:
        raise AssertionError("list ran a forward pass")

    monkeypatch.setattr(torch.nn.Module, "__call__", no_forward)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "11,173,962" in lines["resnet18"]
    assert "64@1 x2, 128@2, 256@4, 512@8" in lines["resnet18"]
    assert "23,520,842" in lines["resnet50"] and " 2048 " in lines["resnet50"]
    assert "64@1, 256@1, 512@2, 1024@4, 2048@8" in lines["resnet50"]
    assert "1,094,750" in lines["reduced-resnet18"]
    assert "89,610" in lines["mnistmlp"] and "1x28x28" in lines["mnistmlp"] and "100@1 x2" in lines["mnistmlp"]
    assert "5,362,762" in lines["vit-tiny-patch4-32"] and "192@4 x12" in lines["vit-tiny-patch4-32"]


def test_check_registered_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "reduced_resnet18"]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS  ") == N
    assert f"all {N} rules hold" in out


@pytest.mark.parametrize("target", ["user_nets:Good", "user_nets:make_good", "user_nets:instance"])
def test_check_user_backbone_passes(user_dir: Path, capsys: pytest.CaptureFixture[str], target: str) -> None:
    assert main(["check", target, "--input-shape", "3,8,8"]) == 0
    # A backbone of one's own has no set_return_prerelu: that rule is not verified, and says so.
    assert f"{N - 1} of {N} rules hold; 1 not verified" in capsys.readouterr().out


def test_input_shape_is_the_shape_the_backbone_receives(user_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "user_nets:Only8x8", "--input-shape", "3,8,8", "--batch-size", "3"]) == 0
    assert "on an input of shape (3, 3, 8, 8)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:  # the default 3,32,32 is refused by this backbone: a usage error
        main(["check", "user_nets:Only8x8"])
    assert info.value.code == 2
    assert "refused shape (4, 3, 32, 32)" in capsys.readouterr().err


def test_a_skipped_rule_is_not_reported_as_holding(user_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "user_nets:Frozen", "--input-shape", "3,8,8"]) == 0
    out = capsys.readouterr().out
    assert "SKIP  get_params() is differentiable, laid out like get_grads() (not verified)" in out
    assert f"{N - 2} of {N} rules hold; 2 not verified" in out
    assert "all" not in out.splitlines()[-1]


def test_check_user_backbone_with_kwargs(user_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "user_nets:Good", "--kwargs", '{"width": 4, "num_classes": 7}', "--batch-size", "2"]) == 0
    assert "input of shape (2, 3, 32, 32)" in capsys.readouterr().out


def test_check_broken_backbone_exits_1(user_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "user_nets:Lenient", "--input-shape", "3,8,8"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  an unknown returnt raises ValueError: returned Tensor of shape (4, 3)" in out
    assert out.count("PASS  ") == N - 2 and out.count("SKIP  ") == 1
    assert f"1 of {N} rules broken" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "user_nets:Missing"], "cannot load 'user_nets:Missing'"),
        (["check", "no_such_module:Net"], "No module named 'no_such_module'"),
        (["check", "user_nets:"], "expected MODULE:ATTR"),
        (["check", "user_nets:not_a_backbone"], "is a int, not a backbone class"),
        (["check", "user_nets:Good", "--kwargs", "{width: 4}"], "expected a JSON object"),
        (["check", "user_nets:Good", "--kwargs", "[1]"], "expected a JSON object"),
        (["check", "user_nets:Good", "--kwargs", '{"depth": 4}'], "unexpected keyword argument 'depth'"),
        (["check", "user_nets:instance", "--kwargs", '{"width": 4}'], "already a module"),
        (["check", "user_nets:Good", "--input-shape", "3,x"], "comma-separated positive ints"),
        (["check", "user_nets:Good", "--input-shape", "0,8"], "comma-separated positive ints"),
        (["check", "user_nets:Good", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["check", "resnet81"], "did you mean 'resnet18'"),
        (["check", "resnet18", "--kwargs", '{"classes": 3}'], "accepts num_classes, num_filters=64"),
        (["check", "resnet18", "--kwargs", '{"num_classes": -1}'], "ValueError: num_classes must be a positive int"),
        (
            ["check", "user_nets:explodes"],
            "cannot build 'user_nets:explodes' with --kwargs {}: RuntimeError: needs a GPU",
        ),
        (["check", "user_nets:Good", "--kwargs", '{"width": -1}'], "cannot build 'user_nets:Good'"),
        (["check", "syntax_error:Net"], "cannot load 'syntax_error:Net': SyntaxError"),
        (["check", "raises_on_import:Net"], "cannot load 'raises_on_import:Net': ZeroDivisionError"),
        (["check"], "the following arguments are required: target"),
        ([], "the following arguments are required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_usage_errors_exit_2(user_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage:" in err
    assert err.strip().splitlines()[-1].startswith("python -m backbone")  # one line names the cause


def test_python_dash_m_entry_point(user_dir: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "backbone", "check", "user_nets:Good", "--input-shape", "3,8,8"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "backbone", "check", "user_nets:Lenient", "--input-shape", "3,8,8"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1 and "FAIL" in bad.stdout
    usage = subprocess.run(
        [sys.executable, "-m", "backbone", "check", "user_nets:Nope"], capture_output=True, text=True, check=False
    )
    assert usage.returncode == 2
    assert "Traceback" not in usage.stderr and "error: cannot load" in usage.stderr


@pytest.mark.parametrize("argv", [["list"], ["check", "mnistmlp"]])
def test_a_closed_pipe_ends_quietly(argv: list[str]) -> None:
    reader = subprocess.Popen(["head", "-c", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    writer = subprocess.run(
        [sys.executable, "-m", "backbone", *argv], stdout=reader.stdin, stderr=subprocess.PIPE, text=True, check=False
    )
    assert reader.stdin is not None
    reader.stdin.close()
    reader.wait()
    assert writer.returncode == 0
    assert writer.stderr == ""


def test_list_reports_an_entry_that_cannot_be_built(capsys: pytest.CaptureFixture[str]) -> None:
    from backbone import register_backbone, unregister_backbone

    @register_backbone("needs-args")
    def needs_args(depth: int) -> None:  # type: ignore[return]
        pass

    try:
        assert main(["list"]) == 0
    finally:
        unregister_backbone("needs-args")
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("needs-args"))
    assert "cannot be built with its example arguments: TypeError" in line


def test_import_makes_a_users_registrations_visible(user_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (user_dir / "my_registry.py").write_text(
        "from backbone import register_backbone\nfrom user_nets import Good\n"
        "register_backbone('good-net', example_kwargs={'num_classes': 3}, example_input_shape=(3, 8, 8))(Good)\n"
    )
    from backbone import unregister_backbone

    try:
        assert main(["--import", "my_registry", "list"]) == 0
        assert "good-net" in capsys.readouterr().out
        assert main(["--import", "my_registry", "check", "good-net"]) == 0
    finally:
        unregister_backbone("good-net")
    with pytest.raises(SystemExit) as info:
        main(["--import", "no_such_module_here", "list"])
    assert info.value.code == 2 and "cannot import 'no_such_module_here'" in capsys.readouterr().err


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and out.startswith("usage:") and "check" in out
    assert "``" not in out
