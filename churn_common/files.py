"""Files replaced whole: written beside the target under a hidden name, then renamed over it, so a reader sees the
old file or the new one, never half of one, and a failed write leaves the old one (and no temp file) behind."""

import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def replace_atomically(target: Path, write: Callable[[Path], object], suffix: str = ".tmp") -> None:
    """``write(temporary)``, then ``temporary`` renamed over ``target``. ``suffix`` names the temporary: a writer
    that may run beside another one on the same file (``churn forget`` beside a pipeline run) takes its own."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}{suffix}")
    try:
        write(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(target: Path, text: str) -> None:
    replace_atomically(target, lambda temporary: temporary.write_text(text))


def write_table_atomically(table: pa.Table, target: Path) -> None:
    replace_atomically(target, lambda temporary: pq.write_table(table, temporary))
