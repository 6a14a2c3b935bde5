"""``python -m viz plot``: a readable PNG from CSV or JSONL logs, found recursively; clean errors with exit 2."""

from __future__ import annotations

import math
import subprocess
import sys

import matplotlib.image
import pytest

from specs.config import VizConfig
from viz.cli import main
from viz.plot import ema
from viz.readers import load_scalars
from viz.session import VizSession

TRAINER_METRICS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "step_time_s")


def _fake_run(path, cfg, steps=60, scale=1.0):
    with VizSession(cfg, path) as viz:
        for step in range(1, steps + 1):
            viz.on_step(None, step, {"loss": scale * (3 + 5 * math.exp(-step / 15)), "lr": 1e-3 * min(1, step / 10),
                                     "grad_norm": 1 / step, "tokens_per_s": 5000.0 + step, "mfu": 0.3,
                                     "step_time_s": 0.1})
            if step % 20 == 0:
                viz.on_eval(None, step, {"loss": 3.5, "ppl": math.exp(3.5)})


def test_plot_png_from_nested_runs(tmp_path, viz_cfg, capsys):
    _fake_run(tmp_path / "runs" / "a" / "logs", viz_cfg(backend=("csv", "jsonl"), log_every=2))
    _fake_run(tmp_path / "runs" / "b", viz_cfg(backend=("jsonl",), log_every=5), scale=1.2)  # JSONL only
    runs = load_scalars(tmp_path / "runs")
    assert [r.name for r in runs] == ["a/logs", "b"]
    assert runs[0].path.name == "scalars.csv"  # the CSV is preferred where both exist
    assert set(TRAINER_METRICS) | {"eval/loss", "eval/ppl"} <= set(runs[1].series)
    assert runs[1].series["eval/loss"] == [(20, 3.5), (40, 3.5), (60, 3.5)]
    out = tmp_path / "curves.png"
    assert main(["plot", str(tmp_path / "runs"), "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    img = matplotlib.image.imread(out)
    assert img.shape[0] > 600 and img.shape[1] > 1000
    assert img[..., :3].std() > 0.05  # curves drawn, not a blank canvas


def test_summary_prints_last_values(tmp_path, viz_cfg, capsys):
    _fake_run(tmp_path, viz_cfg(backend=("csv",), log_every=10), steps=30)
    assert main(["summary", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tokens_per_s" in out and "5030" in out


def test_no_logs_exits_2_naming_the_dir(tmp_path, capsys):
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")  # a CSV, but not ours
    assert main(["plot", str(tmp_path), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no lmstack CSV or JSONL logs found under") and str(tmp_path) in err
    assert not (tmp_path / "x.png").exists()
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_logs_without_plottable_metrics_name_the_tags(tmp_path, viz_cfg, capsys):
    with VizSession(viz_cfg(backend=("csv",)), tmp_path) as viz:
        viz.log_scalars(1, {"accuracy": 0.5})
    assert main(["plot", str(tmp_path), "-o", str(tmp_path / "x.png")]) == 2
    assert "tags found: accuracy" in capsys.readouterr().err


def test_python_dash_m_viz_has_no_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "viz", "plot", str(tmp_path)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr and str(tmp_path) in res.stderr
    res = subprocess.run([sys.executable, "-m", "viz", "plot", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "RUN_DIR" in res.stdout and "--smooth" in res.stdout


def test_ema_is_debiased():
    assert ema([1.0, 1.0, 1.0], 0.9) == pytest.approx([1.0, 1.0, 1.0])  # no pull toward 0 at the start
    assert ema([0.0, 10.0], 0.0) == [0.0, 10.0]
    assert ema([0.0, 10.0], 0.5) == pytest.approx([0.0, 10.0 * 0.5 / 0.75])


def _one_run(path):
    with VizSession(VizConfig(backend=("jsonl",), log_every=1), path) as viz:
        for step in range(1, 4):
            viz.on_step(None, step, {"loss": 1.0 / step})


@pytest.mark.parametrize(("out", "message"), [
    ("somedir", "cannot write {tmp}/somedir: it is a directory; expected an image file path such as "
                "{tmp}/somedir/curves.png"),
    ("p2.txt", "cannot write {tmp}/p2.txt: matplotlib cannot write '.txt' images; expected a suffix among .avif, "),
    ("afile/x.png", "cannot write {tmp}/afile/x.png: {tmp}/afile is not a directory"),
])
def test_plot_checks_the_output_path_before_reading_logs(tmp_path, capsys, monkeypatch, out, message):
    (tmp_path / "somedir").mkdir()
    (tmp_path / "afile").write_text("mine")

    def no_logs(run_dir):
        raise AssertionError("logs were read before -o was checked")

    monkeypatch.setattr("viz.plot.load_scalars", no_logs)
    assert main(["plot", str(tmp_path / "run"), "-o", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(tmp=tmp_path)) and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "somedir"]
    assert (tmp_path / "afile").read_text() == "mine" and list((tmp_path / "somedir").iterdir()) == []


def test_pgf_without_tex_is_refused(tmp_path, capsys, monkeypatch):
    _one_run(tmp_path / "run")
    monkeypatch.setattr("viz.plot.shutil.which", lambda name: None)
    assert main(["plot", str(tmp_path / "run"), "-o", str(tmp_path / "c.pgf")]) == 2
    assert "to lay out a .pgf" in capsys.readouterr().err and not (tmp_path / "c.pgf").exists()


def test_plot_to_a_directory_has_no_traceback(tmp_path):
    _one_run(tmp_path / "run")
    (tmp_path / "somedir").mkdir()
    res = subprocess.run([sys.executable, "-m", "viz", "plot", str(tmp_path / "run"), "-o", str(tmp_path / "somedir")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith(f"error: cannot write {tmp_path / 'somedir'}: it is a dir")
    assert "Traceback" not in res.stderr and list((tmp_path / "somedir").iterdir()) == []


def test_image_is_written_atomically(tmp_path, monkeypatch):
    _one_run(tmp_path / "run")
    out = tmp_path / "curves.svg"
    out.write_text("old")

    def broken_savefig(self, *args, **kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as m:
        m.setattr("matplotlib.figure.Figure.savefig", broken_savefig)
        with pytest.raises(RuntimeError, match="disk full"):
            main(["plot", str(tmp_path / "run"), "-o", str(out)])
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["curves.svg", "run"]
    assert main(["plot", str(tmp_path / "run"), "-o", str(out)]) == 0
    assert out.read_text().lstrip().startswith("<?xml") and sorted(p.name for p in tmp_path.iterdir()) == [
        "curves.svg", "run"]


HEADER = '{"format": "lmstack.viz.jsonl", "version": 1}\n'
SCALARS = '{"type": "scalars", "step": 1, "wall_time": 0, "values": {"loss": 2.0}}\n'


@pytest.mark.parametrize(("name", "text", "message"), [
    ("metrics.jsonl", "not json\n" + SCALARS, "metrics.jsonl:1: malformed log: the first line of a metrics.jsonl "
                                              f"must be {HEADER.strip()!r}, got 'not json'"),
    ("metrics.jsonl", '{"format": "other"}\n', "metrics.jsonl:1: malformed log"),
    ("metrics.jsonl", HEADER + SCALARS + "{oops\n" + SCALARS, "metrics.jsonl:3: malformed line, not JSON"),
    ("metrics.jsonl", HEADER + '{"type": "scalars", "step": 1}\n', "metrics.jsonl:2: malformed scalars record"),
    ("metrics.jsonl", HEADER + '{"type": "scalars", "step": 1, "values": {"loss": "x"}}\n',
     "metrics.jsonl:2: malformed scalars record"),
    ("scalars.csv", "step,tag,value\n1,loss,2.0\n", "scalars.csv:1: malformed log: the first line of a scalars.csv "
                                                    "must be 'step,tag,value,wall_time', got 'step,tag,value'"),
    ("scalars.csv", "step,tag,value,wall_time\n1,loss,2.0\n", "scalars.csv:2: malformed row"),
])
def test_summary_of_a_malformed_log_names_file_and_line(tmp_path, capsys, name, text, message):
    (tmp_path / name).write_text(text)
    assert main(["summary", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / name}:") and message in err and "Traceback" not in err
    assert "no lmstack CSV or JSONL logs found" not in err and (tmp_path / name).read_text() == text


def test_a_log_cut_short_is_still_read(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.jsonl").write_text(HEADER + SCALARS + '{"type": "sca')  # killed mid-write
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metrics.jsonl").write_text(HEADER[:20])  # killed while writing the header: no records
    assert main(["summary", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("a (") and "loss" in out and "b (" not in out
