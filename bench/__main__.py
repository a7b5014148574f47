"""``python -m bench``: every benchmark, figures as ratios against a same-run baseline."""

from bench import persistence

if __name__ == "__main__":
    persistence.main()
