"""cycleinr.worker, the process the Slicer module runs: its line protocol and exit codes."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading

from conftest import ENGINE_DIR, HEAD_CT


def test_worker_reports_bad_input_in_one_line_with_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "cycleinr.worker", "--input", str(HEAD_CT),
                           "--output", str(tmp_path / "out.nrrd"), "--scale", "0.5"],
                          capture_output=True, text=True, cwd=ENGINE_DIR,
                          env=dict(os.environ, PYTHONPATH=str(ENGINE_DIR)), timeout=120)
    assert done.returncode == 2
    assert done.stdout.splitlines() == ["ERROR InputError: scale must be greater than 1 (thinner slices), got 0.5"]
    assert not (tmp_path / "out.nrrd").exists()


def test_worker_run_writes_result_line_and_stops_when_asked(tiny_model, tmp_path):
    from cycleinr import save_model
    from cycleinr.worker import EXIT_CANCELLED, EXIT_OK, build_parser, run
    model = save_model(tmp_path / "tiny.safetensors", tiny_model.network, tiny_model.info)
    args = build_parser().parse_args(["--input", str(HEAD_CT), "--output", str(tmp_path / "out.nrrd"),
                                      "--scale", "2", "--model", str(model), "--threads", "1"])
    stream = io.StringIO()
    assert run(args, stream) == EXIT_OK
    lines = stream.getvalue().splitlines()
    assert lines[-2] == "PROGRESS 1.0000" and lines[-1].startswith('RESULT {"scale": 2.0, "slice_axis": "K"')
    stop = threading.Event()
    stop.set()
    args.output, stream = str(tmp_path / "cancelled.nrrd"), io.StringIO()
    assert run(args, stream, stop) == EXIT_CANCELLED
    assert stream.getvalue().splitlines()[-1].startswith("ERROR Cancelled")
    assert not (tmp_path / "cancelled.nrrd").exists()
