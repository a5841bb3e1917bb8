"""The extension's description files and module sources are complete and well-formed.

Checks: the s4ext has every key the Extensions Index reads; CycleINR.json follows the catalog
entry schema v1.0.1 (required keys, no others); the CMake files declare what Slicer's macros need
and every file they list exists; the .ui binds only parameters the parameter node declares; the
module files compile with Python 3.11 and 3.12 (Slicer 5.8 / 5.10+), where those are installed.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree

import pytest

from conftest import REPO

MODULE_SOURCES = [REPO / "CycleINRSR" / "CycleINRSR.py", REPO / "CycleINRTraining" / "CycleINRTraining.py",
                  REPO / "CycleINRSR" / "Resources" / "Scripts" / "cycleinr_batch.py",
                  REPO / "CycleINRSR" / "cycleinr" / "worker.py"]


def s4ext_fields():
    fields = {}
    for line in (REPO / "CycleINR.s4ext").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    return fields


def cmake_value(text, name):
    match = re.search(rf'set\({name} "([^"]*)"\)', text)
    assert match, f"{name} is not set"
    return match.group(1)


def test_s4ext_has_every_index_field_and_agrees_with_cmake():
    fields = s4ext_fields()
    for key in ("scm", "scmurl", "scmrevision", "depends", "build_subdirectory", "homepage", "contributors",
                "category", "iconurl", "status", "description", "screenshoturls", "enabled"):
        assert fields.get(key), f"s4ext lacks {key}"
    assert fields["scm"] == "git" and fields["iconurl"].endswith("Resources/Icons/CycleINR.png")
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert cmake_value(cmake, "EXTENSION_CATEGORY") == fields["category"]
    assert cmake_value(cmake, "EXTENSION_DESCRIPTION") == fields["description"]
    assert cmake_value(cmake, "EXTENSION_SCREENSHOTURLS") == fields["screenshoturls"]
    for url in fields["screenshoturls"].split() + [fields["iconurl"]]:
        local = REPO / url.split("/main/", 1)[1]
        assert local.exists(), f"{url} points at a file missing from the repository"


def test_catalog_json_follows_schema_v1_0_1():
    entry = json.loads((REPO / "CycleINR.json").read_text())
    assert entry["$schema"].startswith(
        "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json")
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "build_subdirectory", "enabled", "tier"}
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert entry["scm_type"] in ("git", "local") and entry["tier"] in (1, 3, 5)
    assert isinstance(entry["build_dependencies"], list)
    assert entry["category"] == s4ext_fields()["category"]
    assert entry["scm_url"] == s4ext_fields()["scmurl"]


def test_cmake_files_declare_modules_and_list_existing_files():
    top = (REPO / "CMakeLists.txt").read_text()
    for needed in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                   "add_subdirectory(CycleINRSR)", "add_subdirectory(CycleINRTraining)",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert needed in top
    assert top.count("(") == top.count(")")
    for module in ("CycleINRSR", "CycleINRTraining"):
        text = (REPO / module / "CMakeLists.txt").read_text()
        assert text.count("(") == text.count(")")
        for needed in ("slicerMacroBuildScriptedModule(", "WITH_GENERIC_TESTS", "MODULE_PYTHON_SCRIPTS",
                       "MODULE_PYTHON_RESOURCES", "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)",
                       "add_subdirectory(Testing)"):
            assert needed in text, f"{module}/CMakeLists.txt lacks {needed}"
        assert (REPO / module / "Testing" / "CMakeLists.txt").exists()
        for listed in re.findall(r"^\s+(Resources/\S+|\$\{MODULE_NAME\}\.py)$", text, re.M):
            path = REPO / module / listed.replace("${MODULE_NAME}", module)
            assert path.exists(), f"{module}/CMakeLists.txt lists missing {listed}"
    engine = (REPO / "CycleINRSR" / "CMakeLists.txt").read_text()
    assert "cycleinr/*.py" in engine and "cycleinr/commands/*.py" in engine  # the engine ships too
    # Slicer loads every loose .py in a module folder as a module: only the module files may be there
    for module in ("CycleINRSR", "CycleINRTraining"):
        assert sorted(p.name for p in (REPO / module).glob("*.py")) == [f"{module}.py"]


def test_ui_binds_only_declared_parameters(tmp_path):
    tree = ElementTree.parse(REPO / "CycleINRSR" / "Resources" / "UI" / "CycleINRSR.ui")
    bound = {prop.findtext("string") for prop in tree.iter("property")
             if prop.get("name") == "SlicerParameterName"}
    source = (REPO / "CycleINRSR" / "CycleINRSR.py").read_text()
    block = source.split("class CycleINRSRParameterNode:", 1)[1].split("\n\n\n", 1)[0]
    declared = set(re.findall(r"^    (\w+): ", block, re.M))
    assert bound == declared - {"modelPath"}  # the path edit is synced by the widget (str, not Path)


def find_interpreter(version):
    """``pythonX.Y`` on PATH, through pyenv's shims when that is how it is installed."""
    import os
    interpreter = shutil.which(f"python{version}")
    if interpreter is None:
        return None, None
    environment = dict(os.environ)
    if subprocess.run([interpreter, "--version"], capture_output=True, env=environment).returncode != 0:
        pyenv = shutil.which("pyenv")
        listed = subprocess.run([pyenv, "versions", "--bare"], capture_output=True, text=True).stdout.split() \
            if pyenv else []
        matching = [v for v in listed if v.startswith(version + ".")]
        if not matching:
            return None, None
        environment["PYENV_VERSION"] = matching[-1]
    return interpreter, environment


@pytest.mark.parametrize("version", ["3.11", "3.12"])
def test_module_sources_compile(version, tmp_path):
    interpreter, environment = find_interpreter(version)
    if interpreter is None:
        pytest.skip(f"python{version} is not installed here")
    for source in MODULE_SOURCES:
        done = subprocess.run([interpreter, "-c", "import sys, py_compile; py_compile.compile(sys.argv[1], "
                               "cfile=sys.argv[2], doraise=True)", str(source), str(tmp_path / "x.pyc")],
                              capture_output=True, text=True, env=environment)
        assert done.returncode == 0, f"{source.name} does not compile with Python {version}: {done.stderr}"
