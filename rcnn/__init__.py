"""stampseq rcnn package (its capability arrives with a later issue; see cli.py)."""
