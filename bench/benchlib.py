"""Code shared by the bench/ helper scripts (summarise.py, dns_tool.py, checks_tool.py,
reads_tool.py). Standard library only, like the scripts themselves.

The scripts are run as `python3 bench/<tool>.py` from any directory, so each one puts its own
directory on sys.path before `import benchlib`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of the BENCHMARKS.md section NAME (registrations, dns, ...)."""
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def replace_section(path: Path, name: str, section: str) -> None:
    """Replace the text between section NAME's markers in PATH (markers included) with SECTION,
    which must itself start and end with those markers. Appends the section when the file has
    no markers yet and creates the file when it does not exist. Refuses unbalanced markers
    rather than guess which part of a hand-edited file to overwrite."""
    start, end = markers(name)
    if path.exists():
        text = path.read_text()
        s, e = text.find(start), text.find(end)
        if (s == -1) != (e == -1) or (s != -1 and e < s) or text.count(start) > 1 or text.count(end) > 1:
            raise SystemExit(f"error: {path} has unbalanced {start} / {end} markers; fix by hand")
        if s == -1:
            new = text.rstrip("\n") + "\n\n" + section + "\n"
        else:
            new = text[:s] + section + text[e + len(end):]
    else:
        new = "# Benchmarks\n\n" + section + "\n"
    # Write to a temporary file and rename, so an interrupted run never leaves half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".BENCHMARKS.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(new)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
