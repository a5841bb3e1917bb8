"""``Slicer --no-main-window --python-script SCRIPT ARGS...`` on slicer-core, for tests:

    python Testing/slicer_standin/run_script.py SCRIPT ARGS...

Starts the application (slicerapp.start), runs SCRIPT as ``__main__`` with ``sys.argv`` =
[SCRIPT, ARGS...] as Slicer does, then exits with the status the script gave
``slicer.util.exit``. A script that raises is logged and exits 1 (Slicer logs the traceback and
keeps running; a test would then hang); one that never calls exit also ends with 1.
"""
import os
import runpy
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import slicerapp  # noqa: E402


def main():
    slicer = slicerapp.start()
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:  # a script calling sys.exit itself ends Slicer with that status
        return stop.code if isinstance(stop.code, int) else 1
    except Exception:  # noqa: BLE001 - shown as Slicer's Python console shows it
        traceback.print_exc()
        return 1
    slicer.app.processEvents()
    if slicer.app.exitCode is None:
        print("run_script: the script did not call slicer.util.exit (Slicer would keep running)", file=sys.stderr)
        return 1
    return slicer.app.exitCode


if __name__ == "__main__":
    sys.exit(main())
