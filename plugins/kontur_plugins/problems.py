# SPDX-License-Identifier: AGPL-3.0-or-later
"""The one error a section of the policy file raises when it cannot be used: every problem named
(``problems``: "where: what is wrong; what was expected"), so the control machine's ``validate`` and the
node's log say the same."""
from __future__ import annotations


class ConfigProblems(ValueError):
    """A section of the policy file cannot be used; ``problems`` lists why."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems
