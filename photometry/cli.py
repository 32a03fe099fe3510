"""`photometry`: optimal photometry of stamp sequences (not implemented yet)."""
import sys


def main(argv=None) -> int:
    print("photometry: not implemented yet; optimal photometry arrives with the photometry issue", file=sys.stderr)
    return 2
