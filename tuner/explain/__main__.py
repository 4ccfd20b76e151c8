"""python -m tuner.explain STUDY_DIR [--batch-sizes 8,512] [--grid 11] [--examples 512]"""

from tuner.explain.cli import main

if __name__ == "__main__":
    main()
