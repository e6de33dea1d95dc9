"""A run folder's files: one object reads and writes them (:class:`RunFolder`), never through a symbolic
link or outside the folder; status.json is parsed in one place and every checkpoint loaded by one function.

``ownership`` holds the lock that makes one process the folder's only writer.
"""

from aline.runs.files import RunFileError
from aline.runs.folder import RunFolder

__all__ = ["RunFileError", "RunFolder"]
