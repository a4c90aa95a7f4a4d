"""Running `zest_edge.cli.main` in-process and checking its one-line errors."""
import sys

from zest_edge.cli import main


def run_main(monkeypatch, capsys, *args):
    """zest_edge.cli.main with its ZestError -> one stderr line + exit 2 wrapper; returns (code, out, err)."""
    monkeypatch.setattr(sys, "argv", ["zest-edge", *args])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code, err, *fragments):
    """Exit 2, exactly one 'error: ...' line containing every fragment, no traceback; returns the line."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def export_cli(out, *args):
    """`zest-edge export --model mobilenet_v2 --data fashion_mnist --limit 40 --lr 0.01 ARGS --out OUT` in-process,
    for module-scoped fixtures (no monkeypatch fixture there); returns `out`."""
    old = sys.argv
    sys.argv = ["zest-edge", "export", "--model", "mobilenet_v2", "--data", "fashion_mnist", "--limit", "40",
                "--lr", "0.01", *args, "--out", str(out)]
    try:
        main()
    finally:
        sys.argv = old
    return out
