"""`python -m distrec.search`: the hyper-parameter search (the code: distrec/experiments/search.py)."""

from distrec.experiments.search import cli

if __name__ == "__main__":
    cli()
