"""Output: all-or-nothing folders, the merged model, permutations, policy and report.

Example:
    >>> from graphperm.output import output_folder, save_merge
"""

from __future__ import annotations

from graphperm.output.folder import check_not_an_input, check_output, output_folder
from graphperm.output.save import report_dict, save_alignment, save_merge, write_model

__all__ = [
    "check_not_an_input",
    "check_output",
    "output_folder",
    "report_dict",
    "save_alignment",
    "save_merge",
    "write_model",
]
