"""`python -m distrec.retrieve`: top-K lists from a run's exports (the code: distrec/serve/retrieve.py)."""

from distrec.serve.retrieve import cli

if __name__ == "__main__":
    cli()
