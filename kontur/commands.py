"""Core commands: validate, show, render."""
from __future__ import annotations
