from dymo.cli.main import app

app(prog_name="dymo")
