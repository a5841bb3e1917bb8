"""The Slicer API audit table (Testing/SLICER_API_AUDIT.md) covers every Slicer call the extension makes.

The modules, their .ui file, the batch script and the extension files are parsed (``ast`` for Python,
XML for the .ui, plain text for CMake, s4ext and JSON); every Slicer / MRML / VTK / CTK / Qt name they
use must have a row in the table, each row must cite the real source it was checked against
(repository@tag-or-commit path:line), give the real signature and a verdict, and every keyword
argument we pass to a Slicer function must appear in the signature the row records. A call added
to the modules without being checked against Slicer's sources makes this test fail.

After a merge moves lines, refresh the "Used at" column (the references stay hand-written):

    python Testing/test_slicer_api_audit.py --update-used-at
"""
from __future__ import annotations

import ast
import json
import re
import sys
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "Testing" / "SLICER_API_AUDIT.md"
PYTHON_FILES = ["CycleINRSR/CycleINRSR.py", "CycleINRTraining/CycleINRTraining.py",
                "CycleINRSR/Resources/Scripts/cycleinr_batch.py"]
UI_FILE = "CycleINRSR/Resources/UI/CycleINRSR.ui"
CMAKE_FILES = ["CMakeLists.txt", "CycleINRSR/CMakeLists.txt", "CycleINRSR/Testing/CMakeLists.txt",
               "CycleINRTraining/CMakeLists.txt", "CycleINRTraining/Testing/CMakeLists.txt"]
S4EXT_FILE, CATALOG_FILE = "CycleINR.s4ext", "CycleINR.json"

# Top-level modules that belong to Slicer (or to extensions it loads), as the modules import them.
SLICER_ROOTS = {"slicer", "qt", "ctk", "vtk", "SampleData", "PyTorchUtils"}
# Members the parameter node wrapper adds (Base/Python/slicer/parameterNodeWrapper/wrapper.py).
WRAPPER_API = {"connectGui", "disconnectGui", "connectParametersToGui", "getValue", "setValue", "default",
               "isCached", "dataType", "allParameters", "parameterNode"}
# CMake's own commands (not Slicer's); everything else called in the CMake files is Slicer's.
CMAKE_BUILTINS = {"cmake_minimum_required", "project", "set", "find_package", "include", "add_subdirectory",
                  "file", "if", "endif", "else", "elseif", "add_test", "set_tests_properties", "list",
                  "message", "foreach", "endforeach"}
SOURCE_REFERENCE = re.compile(r"^[\w.+-]+/[\w.+-]+@[\w.+-]+ [\w./+-]+:\d+")
VERDICT = re.compile(r"^(ok|fixed|differs)\b")


# --- what the files use ---------------------------------------------------------------------------
class _PythonUses(ast.NodeVisitor):
    """Symbols of one module file -> line numbers, plus the keywords passed to each Slicer call.

    Symbol forms: a dotted Slicer name (``slicer.util.loadUI``, ``qt.QTimer``, ``vtk.vtkCommand.ModifiedEvent``);
    ``Class.member`` for a member of a Qt/CTK/MRML widget whose class is known (from the .ui or the
    constructor call); ``self.member`` for what a Slicer base class gives our subclass; ``parameterNodeWrapper.member``;
    ``*.Member`` for a VTK/MRML method on an object of unknown class; ``Class.signal(args)`` for a
    PythonQt string connection.
    """

    def __init__(self, source, uiClasses, preImported=()):
        self.uses = defaultdict(set)
        self.keywords = defaultdict(set)
        self.aliases = {name: name for name in preImported}  # local name -> dotted Slicer name
        self.foreignModules = set()  # imported non-Slicer modules (os, subprocess, sitk ...)
        self.uiClasses = uiClasses  # widget name in the .ui -> class
        self.ownMembers = set()  # self.X assigned or defined by our classes
        self.slicerBaseClasses = set()
        tree = ast.parse(source)
        self._collectOwnMembers(tree)
        self._recording = False
        for node in ast.walk(tree):  # imports first: a name is Slicer's wherever it is imported
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self.visit(node)
        self._recording = True
        self.visit(tree)

    # pass 1: what is ours ---------------------------------------------------------------------------
    def _collectOwnMembers(self, tree):
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.ownMembers.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _isSelf(node.value):
                self.ownMembers.add(node.attr)

    # imports ----------------------------------------------------------------------------------------
    def visit_Import(self, node):
        for alias in node.names:
            root = alias.name.split(".")[0]
            local = alias.asname or root
            if root in SLICER_ROOTS:
                self.aliases[local] = alias.name if alias.asname else root
                self._use(alias.name, node)
            else:
                self.foreignModules.add(local)

    def visit_ImportFrom(self, node):
        root = (node.module or "").split(".")[0]
        for alias in node.names:
            local = alias.asname or alias.name
            if root in SLICER_ROOTS:
                dotted = f"{node.module}.{alias.name}"
                self.aliases[local] = dotted
                self._use(dotted, node)
            else:
                self.foreignModules.add(local)

    def visit_ClassDef(self, node):
        for base in node.bases:
            if isinstance(base, ast.Name) and base.id in self.aliases:
                self.slicerBaseClasses.add(node.name)
        self.generic_visit(node)

    # names and attributes ---------------------------------------------------------------------------
    def visit_Name(self, node):
        if node.id in self.aliases and isinstance(node.ctx, ast.Load):
            self._use(self.aliases[node.id], node)

    def visit_Attribute(self, node):
        symbol = self._symbol(node)
        if symbol:
            self._use(symbol, node)
            return  # the inner part of a chain is not a use of its own
        self.generic_visit(node)

    def visit_Call(self, node):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("connect", "disconnect") and node.args and \
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            owner = self._widgetClass(func.value)
            if owner:
                self._use(f"{owner}.{node.args[0].value}", node)
        symbol = self._symbol(func) if isinstance(func, ast.Attribute) else (
            self.aliases.get(func.id) if isinstance(func, ast.Name) else None)
        if symbol:
            for keyword in node.keywords:
                if keyword.arg:
                    self.keywords[symbol].add(keyword.arg)
        self.generic_visit(node)

    def _symbol(self, node):
        """The symbol an attribute access stands for, or None when it is not Slicer's."""
        chain, base = _chain(node)
        if isinstance(base, ast.Name) and base.id in self.aliases:
            return ".".join([self.aliases[base.id]] + chain)
        if isinstance(base, ast.Name) and base.id in self.foreignModules:
            return None
        owner = self._widgetClass(_withoutLast(node)) if isinstance(node, ast.Attribute) else None
        if owner:
            return f"{owner}.{node.attr}"
        if _isSelf(base) and chain:
            if chain[0] == "_parameterNode" and len(chain) > 1 and chain[1] in WRAPPER_API:
                return f"parameterNodeWrapper.{chain[1]}"
            if chain[0] not in self.ownMembers and (chain[0] not in {"ui"}):
                return "self." + ".".join(chain[:2] if chain[0] in ("parent", "layout") else chain[:1])
        if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super" and chain:
            return "self." + chain[0]
        if chain and chain[-1][:1].isupper() and not _sitkObject(node, self):
            return "*." + chain[-1]
        return None

    def _widgetClass(self, node):
        """The Qt/CTK/MRML class of ``self.ui.name``, of ``self.x``/``x`` built as ``qt.Class()``, or of loadUI's result."""
        chain, base = _chain(node) if isinstance(node, ast.Attribute) else ([], node)
        if _isSelf(base) and len(chain) == 2 and chain[0] == "ui":
            return self.uiClasses.get(chain[1])
        key = ("self." + ".".join(chain)) if _isSelf(base) else (base.id if isinstance(base, ast.Name) and not chain else None)
        return self.constructed.get(key) if key else None

    def _use(self, symbol, node):
        if self._recording:
            self.uses[symbol].add(node.lineno)

    def visit_Module(self, node):
        self.constructed = {}
        self.sitkNames = set()
        for statement in ast.walk(node):
            if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Call):
                made = self._constructedClass(statement.value.func)
                for target in statement.targets:
                    name = ast.unparse(target)
                    if made:
                        self.constructed[name] = made
                    if _rootName(statement.value.func) == "sitk":
                        self.sitkNames.add(name)
        self.generic_visit(node)

    def _constructedClass(self, func):
        dotted = self._symbol(func) if isinstance(func, ast.Attribute) else None
        if dotted == "slicer.util.loadUI":
            return self.uiClasses.get("")
        if dotted and re.match(r"^(qt|ctk|slicer)\.[qQ]\w+$|^(ctk)\.ctk\w+$|^PyTorchUtils\.\w+$", dotted):
            return dotted.split(".")[-1]
        return None


def _isSelf(node):
    return isinstance(node, ast.Name) and node.id == "self"


def _chain(node):
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    return list(reversed(names)), node


def _withoutLast(node):
    return node.value


def _rootName(node):
    _, base = _chain(node)
    return base.id if isinstance(base, ast.Name) else None


def _sitkObject(node, uses):
    _, base = _chain(node)
    return isinstance(base, ast.Name) and (base.id in uses.sitkNames or base.id == "sitk")


def uiUses():
    """Symbols of the .ui file: widget classes, their properties, the connections' signals and slots."""
    uses = defaultdict(set)
    text = (REPO / UI_FILE).read_text()
    root = ElementTree.fromstring(text)
    lines = text.splitlines()

    def lineOf(fragment, start=0):
        for number in range(start, len(lines)):
            if fragment in lines[number]:
                return number + 1
        return 0

    classes, cursor = {}, 0
    for element in root.iter():
        if element.tag in ("widget", "layout"):
            cursor = lineOf(f'name="{element.get("name")}"', cursor) or cursor
            uses[f"ui:{element.get('class')}"].add(cursor)  # 1-based: lines[cursor - 1] is this element's line
            classes[element.get("name")] = element.get("class")
            owner = element.get("class")
        elif element.tag == "spacer":
            cursor = lineOf(f'name="{element.get("name")}"', cursor) or cursor
            owner = "spacer"
        if element.tag in ("widget", "layout", "spacer"):
            for child in element.findall("property"):
                name = child.get("name")
                symbol = "ui:dynamic property SlicerParameterName" if child.get("stdset") == "0" and \
                    name == "SlicerParameterName" else f"{owner}.{name}"
                uses[symbol].add(lineOf(f'<property name="{name}"', cursor - 1) or cursor)
    for connection in root.iter("connection"):
        sender, receiver = connection.findtext("sender"), connection.findtext("receiver")
        number = lineOf(f"<receiver>{receiver}</receiver>")
        uses[f"{classes[sender]}.{connection.findtext('signal')}"].add(number)
        uses[f"{classes[receiver]}.{connection.findtext('slot')}"].add(number)
    top = root.find("widget")
    classes[""] = top.get("class")
    return uses, classes


def pythonUses(relative, uiClasses):
    return _PythonUses((REPO / relative).read_text(), uiClasses)


def cmakeUses(relative):
    """Slicer's CMake commands with their keywords, Slicer_* variables, EXTENSION_* settings, Slicer options."""
    uses = defaultdict(set)
    text = (REPO / relative).read_text()
    blank = lambda match: re.sub(r"[^\n]", " ", match.group())  # noqa: E731 - offsets and lines kept
    # left to right, so that a '#' inside a string is not a comment: comments blanked in both,
    # quoted text blanked where commands are looked for
    code = re.sub(r'"[^"]*"|#[^\n]*', lambda m: m.group() if m.group().startswith('"') else blank(m), text)
    strings = re.sub(r'"[^"]*"', blank, code)

    def lineAt(offset):
        return text.count("\n", 0, offset) + 1

    # Python given to Slicer with --python-code runs where ``slicer`` is already imported
    for match in re.finditer(r'--python-code\s+"([^"]*)"', code):
        snippet = _PythonUses(match.group(1), {}, preImported=("slicer",))
        for symbol, lines in snippet.uses.items():
            uses[symbol].add(lineAt(match.start(1)))

    for match in re.finditer(r"\b(\w+)\s*\(([^()]*)\)", strings):
        command, arguments = match.group(1), re.sub(r"\$\{[^}]*\}", blank, match.group(2))
        if command.lower() in CMAKE_BUILTINS:
            if command == "set" and arguments.split()[0].startswith("EXTENSION_"):
                uses[f"cmake:{arguments.split()[0]}"].add(lineAt(match.start()))
            continue
        uses[f"cmake:{command}"].add(lineAt(match.start()))
        for keyword in re.finditer(r"\b([A-Z][A-Z_]+)\b", arguments):
            uses[f"cmake:{command} {keyword.group(1)}"].add(lineAt(match.start(2) + keyword.start()))
    for match in re.finditer(r"\$\{(Slicer_\w+)\}", code):
        uses[f"cmake:${{{match.group(1)}}}"].add(lineAt(match.start()))
    for match in re.finditer(r"(?<![\w/.-])(--[\w-]*)", strings):
        uses[f"slicer-cli:{match.group(1)}"].add(lineAt(match.start()))
    return uses


def extensionDescriptionUses():
    uses = defaultdict(set)
    for number, line in enumerate((REPO / S4EXT_FILE).read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            uses[f"s4ext:{line.split()[0]}"].add(number)
    text = (REPO / CATALOG_FILE).read_text()
    for key in json.loads(text):
        number = next(n for n, line in enumerate(text.splitlines(), 1) if f'"{key}"' in line)
        uses[f"json:{key}"].add(number)
    return uses


def allUses():
    """symbol -> {file: set(lines)}, and symbol -> keywords passed to it."""
    uses, keywords = defaultdict(lambda: defaultdict(set)), defaultdict(set)
    ui, uiClasses = uiUses()
    for symbol, lines in ui.items():
        uses[symbol][UI_FILE] |= lines
    for relative in PYTHON_FILES:
        found = pythonUses(relative, uiClasses)
        for symbol, lines in found.uses.items():
            uses[symbol][relative] |= lines
        for symbol, names in found.keywords.items():
            keywords[symbol] |= names
    for relative in CMAKE_FILES:
        for symbol, lines in cmakeUses(relative).items():
            uses[symbol][relative] |= lines
    for symbol, lines in extensionDescriptionUses().items():
        uses[symbol][S4EXT_FILE if symbol.startswith("s4ext:") else CATALOG_FILE] |= lines
    return uses, keywords


# --- the table ------------------------------------------------------------------------------------
def tableRows():
    """symbol -> dict(usedAt, source, signature, verdict, line) from the Markdown table."""
    rows = {}
    for number, line in enumerate(TABLE.read_text().splitlines(), 1):
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        assert len(cells) == 5, f"SLICER_API_AUDIT.md:{number}: a row needs 5 cells, has {len(cells)}"
        symbol = cells[0].strip("`")
        assert symbol not in rows, f"SLICER_API_AUDIT.md:{number}: {symbol} has two rows"
        rows[symbol] = dict(usedAt=cells[1], source=cells[2], signature=cells[3], verdict=cells[4], line=number)
    return rows


def usedAtText(files):
    return ", ".join(f"{name}:{','.join(str(n) for n in sorted(lines))}" for name, lines in sorted(files.items()))


def test_every_slicer_name_the_extension_uses_has_a_checked_row():
    uses, _ = allUses()
    rows = tableRows()
    missing = [f"{symbol} (used at {usedAtText(files)})" for symbol, files in sorted(uses.items())
               if symbol not in rows]
    assert not missing, ("names used but not audited in Testing/SLICER_API_AUDIT.md (add a row with the real "
                         "source file:line and signature):\n  " + "\n  ".join(missing))


def test_every_row_cites_a_real_source_signature_and_verdict_and_is_still_used():
    uses, _ = allUses()
    problems = []
    for symbol, row in tableRows().items():
        where = f"SLICER_API_AUDIT.md:{row['line']} {symbol}"
        for reference in row["source"].split("; "):
            if not SOURCE_REFERENCE.match(reference):
                problems.append(f"{where}: source {reference!r} is not 'owner/repo@tag path:line'")
        if not row["signature"] or row["signature"] == "-":
            problems.append(f"{where}: no real signature")
        if not VERDICT.match(row["verdict"]):
            problems.append(f"{where}: verdict must start with ok / fixed / differs")
        if symbol not in uses:
            problems.append(f"{where}: no longer used by the extension (remove the row)")
        elif row["usedAt"] != usedAtText(uses[symbol]):
            problems.append(f"{where}: 'Used at' is {row['usedAt']!r}, the files say {usedAtText(uses[symbol])!r} "
                            "(run: python Testing/test_slicer_api_audit.py --update-used-at)")
    assert not problems, "\n".join(problems)


def test_every_keyword_we_pass_is_in_the_real_signature():
    _, keywords = allUses()
    rows = tableRows()
    problems = [f"{symbol}({name}=...) but the real signature is {rows[symbol]['signature']}"
                for symbol, names in sorted(keywords.items()) if symbol in rows
                for name in sorted(names) if not re.search(rf"\b{name}\b", rows[symbol]["signature"])]
    assert not problems, "\n".join(problems)


def test_the_extractor_sees_what_the_modules_do():
    """The parser itself: names known to be in the modules are found, with the right kind of symbol."""
    uses, keywords = allUses()
    for symbol in ("slicer.util.loadUI", "vtk.vtkCommand.ModifiedEvent", "QPushButton.clicked(bool)",
                   "ctkSliderWidget.valueChanged(double)", "QProgressBar.format", "QSpinBox.setRange",
                   "*.GetIJKToRASMatrix", "self.parent.isEntered", "parameterNodeWrapper.disconnectGui",
                   "qMRMLWidget.setMRMLScene", "ui:dynamic property SlicerParameterName",
                   "cmake:slicerMacroBuildScriptedModule", "s4ext:scmurl", "json:tier"):
        assert symbol in uses, symbol
    assert "fit" in keywords["slicer.util.setSliceViewerLayers"]
    assert not any(symbol.startswith("*.") and symbol[2:] in ("ReadImage", "GetDirection", "SetDirection")
                   for symbol in uses), "SimpleITK calls are not Slicer's"


def test_panel_unbinds_its_widgets_on_exit_with_slicer_5_8_connectGui(monkeypatch):
    """Slicer 5.8.1's connectGui returns None (wrapper.py:253; the tag only from 5.10): the panel must
    still get a tag it can disconnect, or a widget keeps writing the parameter node after exit()."""
    import pytest
    from conftest import ENGINE_DIR, HEAD_CT
    standin = REPO / "Testing" / "slicer_standin"
    if not (standin / "slicer" / "parameterNodeWrapper.py").exists():
        pytest.skip("no Slicer stand-in in this checkout")
    for path in (str(standin), str(ENGINE_DIR)):
        if path not in sys.path:
            sys.path.insert(0, path)
    import slicer
    from slicer.ScriptedLoadableModule import createModule, createWidget

    import CycleINRSR
    if not hasattr(slicer.modules, "cycleinrsr"):
        createModule(CycleINRSR.CycleINRSR)
    slicer.mrmlScene.Clear(True)
    connectGui = CycleINRSR.CycleINRSRParameterNode.connectGui
    monkeypatch.setattr(CycleINRSR.CycleINRSRParameterNode, "connectGui",
                        lambda self, gui: [connectGui(self, gui), None][1])  # as Slicer 5.8.1 does
    slicer.util.loadVolume(str(HEAD_CT))
    widget = createWidget(CycleINRSR.CycleINRSRWidget)
    try:
        parameters = widget._parameterNode
        widget.ui.tileSizeSpinBox.value = 32
        assert parameters.tileSize == 32  # bound while the module is shown
        widget.exit()
        widget.ui.tileSizeSpinBox.value = 64
        assert parameters.tileSize == 32, "the panel still writes the parameter node after exit()"
        widget.enter()
        assert widget.ui.tileSizeSpinBox.value == 32  # bound again, showing the node's value
        widget.ui.tileSizeSpinBox.value = 16
        assert parameters.tileSize == 16
    finally:
        widget.exit()
        widget.cleanup()
        slicer.mrmlScene.Clear(True)


def _updateUsedAt():
    uses, _ = allUses()
    lines = TABLE.read_text().splitlines()
    for index, line in enumerate(lines):
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
            symbol = cells[0].strip("`")
            if symbol in uses:
                cells[1] = usedAtText(uses[symbol])
                lines[index] = "| " + " | ".join(cells) + " |"
    TABLE.write_text("\n".join(lines) + "\n")
    missing = sorted(set(uses) - set(tableRows()))
    print(f"updated; {len(missing)} names still need a row: {missing}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--update-used-at"]:
        _updateUsedAt()
    else:
        print(__doc__)
