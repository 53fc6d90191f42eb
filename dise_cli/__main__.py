"""``python -m dise_cli`` runs the same entry as the ``dise`` console script."""
from dise_cli.cli import entry

if __name__ == "__main__":
    entry()
