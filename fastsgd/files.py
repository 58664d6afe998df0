"""Writing files atomically: a temporary name in the same folder, then a rename."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_json(path, obj) -> Path:
    """``obj`` as indented JSON at ``path``; readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
