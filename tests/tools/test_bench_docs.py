"""bench_docs: the environment header of docs/ pages, their atomic write, and the docs' links."""

import re
from pathlib import Path

import pytest

from smoothrot.tools import bench_docs
from smoothrot.tools.bench_docs import (
    CPU_FLAGS,
    PACKAGES,
    command_line,
    environment_header,
    package_version,
    write_doc,
)

ROOT = Path(__file__).resolve().parents[2]
COMMAND = "python -m smoothrot.tools.bench_quality -o out/bq --docs docs/quality.md"
FIELDS = ("date", "commit", "command", "CPU", "CPU flags", "cores", "python", *PACKAGES)


def _fields(header: str) -> dict[str, str]:
    rows = re.findall(r"^\| (.+?) \| (.*) \|$", header, flags=re.MULTILINE)
    return {key: value for key, value in rows if key.strip()}


def test_header_has_every_field():
    header = environment_header(COMMAND)
    assert header.startswith(f"Regenerate this page with `{COMMAND}`.")
    fields = _fields(header)
    assert list(fields) == list(FIELDS)  # none dropped, none renamed
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", fields["date"])
    assert re.fullmatch(r"`([0-9a-f]{4,}(\+dirty)?|unknown)`", fields["commit"])
    assert fields["command"] == f"`{COMMAND}`"
    assert fields["cores"].isdigit() and re.fullmatch(r"3\.\d+\.\d+", fields["python"])
    assert all(fields[name] for name in PACKAGES)
    assert fields["onnxruntime"] != "not installed" and fields["onnx_ir"] != "not installed"


def test_cpu_flags_from_cpuinfo(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 fma f16c\n")
    monkeypatch.setattr(bench_docs, "_CPUINFO", info)
    assert bench_docs.cpu_model() == "Test CPU 9000"
    flags = bench_docs.cpu_flags()
    assert flags is not None and set(flags) == set(CPU_FLAGS)
    assert flags["avx2"] and flags["fma"] and flags["f16c"] and not flags["avx512f"]
    fields = _fields(environment_header(COMMAND))
    assert fields["CPU"] == "Test CPU 9000"
    assert fields["CPU flags"] == "avx2, fma, f16c (absent: avx512f, avx512_vnni, avx_vnni)"


def test_unknown_where_there_is_no_cpuinfo_or_git(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_docs, "_CPUINFO", tmp_path / "absent")
    monkeypatch.setattr(bench_docs, "_git", lambda *args: None)
    fields = _fields(environment_header(COMMAND))
    assert fields["CPU"] == "unknown" and fields["CPU flags"] == "unknown"
    assert fields["commit"] == "`unknown`"


def test_missing_package_reads_not_installed():
    assert package_version("smoothrot_no_such_package") == "not installed"


def test_command_line_quotes_arguments():
    text = command_line("smoothrot.tools.bench_quality", ["--only", "w4a4 (recipe", "-o", "x"])
    assert text == "python -m smoothrot.tools.bench_quality --only 'w4a4 (recipe' -o x"


def test_write_doc_writes_title_header_body(tmp_path):
    path = tmp_path / "docs" / "quality.md"
    write_doc(path, "Quality", COMMAND, "| a | b |\n|---|---|\n| 1 | 2 |\n")
    text = path.read_text()
    assert text.startswith("# Quality\n\nRegenerate this page with `")
    assert COMMAND in text and text.endswith("| 1 | 2 |\n")
    assert list(_fields(text))[: len(FIELDS)] == list(FIELDS)
    write_doc(path, "Quality", COMMAND, "second")  # replaces the page
    assert path.read_text().endswith("\nsecond\n")
    assert [p.name for p in path.parent.iterdir()] == ["quality.md"]  # no temporary left


def test_write_doc_keeps_the_old_page_when_the_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "speed.md"
    path.write_text("old\n")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(bench_docs.os, "replace", fail)
    with pytest.raises(OSError):
        write_doc(path, "Speed", COMMAND, "new")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["speed.md"]


_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _relative_links(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # code blocks
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code
    links = [m.group(1) for m in _LINK.finditer(text)]
    return [link for link in links if not re.match(r"[a-z][a-z0-9+.-]*:|#", link)]


def test_every_relative_link_in_readme_and_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing = [
        f"{page.relative_to(ROOT)}: {link}"
        for page in pages
        for link in _relative_links(page.read_text())
        if not (page.parent / link.split("#")[0]).exists()
    ]
    assert not missing


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    start = next(i for i, line in enumerate(lines) if line.startswith("```"))
    assert not any(line.startswith("## ") for line in lines[:start])  # the first block
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
    block = lines[start + 1 : end]
    assert [line.split()[:2] for line in block] == [["make", "demo"], ["make", "test"]]
