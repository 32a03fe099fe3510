"""`rcnn train|evaluate|classify`: the recurrent convolutional classifier (not implemented yet)."""
import sys


def main(argv=None) -> int:
    print("rcnn: not implemented yet; training, evaluation and classification arrive with the RCNN issue",
          file=sys.stderr)
    return 2
