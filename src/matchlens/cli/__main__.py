"""``python -m matchlens.cli``."""

from matchlens.cli import main

main()
