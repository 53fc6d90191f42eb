"""``python -m dise_cli`` runs the same app as the ``dise`` console script."""
from dise_cli.cli import app

if __name__ == "__main__":
    app(prog_name="dise")
